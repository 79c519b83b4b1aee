"""Analysis overhead: wall time of the post-training analysis vs the training itself.

Runs :func:`metadask.train` (single strategy, analysis on, default analysis options) on a
synthetic dataset on a LocalCluster (``--workers`` x 1 thread) and reports the analysis time
(``timings["analysis"]``: evaluation, plots, SHAP sample, importance, overfitting, report)
against the training phase (``timings["training"]``: every CV and final fit) and the whole
run. Target: analysis <= 15 % of training on the 1,000-gene benchmark.

    python -m benchmarks analysis_overhead [--genes 1000] [--n-estimators 800] [--n-folds 5] [--tiny]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from benchmarks.common import synthetic, table, write_result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genes", type=int, default=1000)
    ap.add_argument("--n-estimators", type=int, default=800)
    ap.add_argument("--n-folds", type=int, default=5)
    ap.add_argument("--shap-sample", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="smoke run: 30 genes, 10 trees, 2 folds, 300 SHAP rows")
    args = ap.parse_args(argv)
    if args.tiny:
        args.genes, args.n_estimators, args.n_folds, args.shap_sample = 30, 10, 2, 300
    from distributed import Client, LocalCluster

    import metadask

    path = synthetic(args.genes, genes_per_file=max(10, args.genes // 10))
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(
        n_workers=args.workers, threads_per_worker=1, dashboard_address=":0", env={"OMP_WAIT_POLICY": "PASSIVE"}
    ) as cluster, Client(cluster) as client:
        t0 = time.perf_counter()
        result = metadask.train(str(path), os.path.join(tmp, "run"), client=client, strategy="single",
                                n_folds=args.n_folds, n_estimators=args.n_estimators, shap_sample=args.shap_sample)
        wall = time.perf_counter() - t0
        n_rows = len(result.oof_parts)
    t = result.timings
    steps = {k.removeprefix("analysis_"): v for k, v in t.items() if k.startswith("analysis_")}
    ratio = t["analysis"] / t["training"]
    rows = [
        ("dataset", f"{args.genes} synthetic genes, {n_rows:,} rows, {len(result.features)} features"),
        ("training", f"{args.n_folds} folds, {args.n_estimators} trees max, {args.workers} workers x 1 thread"),
        ("training phase (s)", f"{t['training']:.1f}"),
        ("analysis (s)", f"{t['analysis']:.1f}  (" + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()) + ")"),
        ("whole run (s)", f"{wall:.1f}"),
        ("analysis / training", f"{ratio:.1%} (target <= 15 %)"),
        ("analysis / whole run", f"{t['analysis'] / wall:.1%}"),
    ]
    print(table(rows))
    payload = {
        "genes": args.genes, "rows": n_rows, "features": len(result.features),
        "n_estimators": args.n_estimators, "n_folds": args.n_folds, "shap_sample": args.shap_sample,
        "workers": args.workers, "training_seconds": t["training"], "analysis_seconds": t["analysis"],
        "wall_seconds": wall, "analysis_over_training": ratio, "analysis_steps": steps, "timings": t,
        "trees": result.fits[["key", "n_trees"]].to_dict(orient="records"), "load_average": os.getloadavg(),
    }
    suffix = "_tiny" if args.tiny else "" if args.genes == 1000 else f"_{args.genes}genes"
    write_result("analysis_overhead" + suffix, payload)
    return payload


if __name__ == "__main__":
    main()
