"""Orchestration overhead: metadask's single strategy vs the same XGBoost fits done bare.

metadask trains the single strategy (analysis off) on a synthetic dataset on a LocalCluster
(2 workers x 1 thread by default). In the same run, the same fits (same genes, params,
evaluation sets and early stopping, hence the same trees) are done bare in this process on
NumPy arrays loaded beforehand, with XGBoost using every core. Prints both wall times, peak
memory and the ratio; target metadask / bare <= 1.0.

    python -m benchmarks orchestration [--genes 1000] [--n-estimators 800] [--tiny]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from benchmarks.common import PeakRSS, synthetic, table, write_result


def run_bare(result, dataset_path: str, config_kwargs: dict, nthread: int) -> dict:
    """The same fits as ``result`` (a single-strategy TrainingResult), bare, on NumPy arrays."""
    from metadask.config import TrainConfig
    from metadask.dataset import build_gene_index, open_dataset
    from metadask.models.boosted import booster_from_bytes, booster_margins, fit_binary
    from metadask.plan import plan_folds
    from metadask.dataset.rows import gene_set, read_rows

    cfg = TrainConfig.from_options(**config_kwargs)
    ds = open_dataset(dataset_path)
    index = build_gene_index(ds)
    plans = plan_folds(index, result.folds, valid_size=cfg.valid_size, seed=cfg.seed)
    feats = result.features

    def load(genes):
        genes = tuple(sorted(genes))
        return read_rows(ds, gene_set(index, genes), feats)

    # load every array first (not timed): bare XGBoost on NumPy arrays
    data = []
    for fp in plans:
        x, y, meta = load(fp.fit)
        xv, yv, _ = load(fp.valid)
        mask = meta[ds.gene_column].isin(fp.train_eval).to_numpy()
        xt, _, _ = load(fp.test)
        data.append((fp, x, y, xv, yv, mask, xt))
    xall, yall, _ = load(index.genes)
    params = cfg.xgb_params()
    fit_seconds, trees = 0.0, {}
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        per_class = {k: [] for k in range(3)}
        for fp, x, y, xv, yv, mask, xt in data:
            boosters = []
            for k in range(3):
                t = (y == k).astype(np.float32)
                out = fit_binary(x, t, params, cfg.n_estimators, x_valid=xv, y_valid=(yv == k).astype(np.float32),
                                 x_train_eval=x[mask], y_train_eval=t[mask],
                                 early_stopping_rounds=cfg.early_stopping_rounds, nthread=nthread)
                per_class[k].append(out.n_trees)
                trees[f"cv-f{fp.fold}-{k}"] = out.n_trees
                boosters.append(booster_from_bytes(out.booster))
            booster_margins(boosters, xt, nthread=nthread)
        for k in range(3):
            n = max(1, int(round(float(np.mean(per_class[k])))))
            out = fit_binary(xall, (yall == k).astype(np.float32), params, n, nthread=nthread)
            trees[f"final-{k}"] = out.n_trees
        fit_seconds = time.perf_counter() - t0
    return {"seconds": fit_seconds, "peak_rss": mem.peak, "trees": trees}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genes", type=int, default=1000)
    ap.add_argument("--n-estimators", type=int, default=800)
    ap.add_argument("--n-folds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="smoke run: 30 genes, 20 trees, 2 folds")
    args = ap.parse_args(argv)
    if args.tiny:
        args.genes, args.n_estimators, args.n_folds = 30, 20, 2
    from distributed import Client, LocalCluster

    import metadask

    path = synthetic(args.genes, genes_per_file=max(10, args.genes // 10))
    opts = {"n_folds": args.n_folds, "n_estimators": args.n_estimators, "seed": 42}
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(
        n_workers=args.workers, threads_per_worker=1, dashboard_address=":0", env={"OMP_WAIT_POLICY": "PASSIVE"}
    ) as cluster, Client(cluster) as client:
        with PeakRSS(children=False) as client_mem:
            t0 = time.perf_counter()
            result = metadask.train(str(path), os.path.join(tmp, "run"), client=client, strategy="single",
                                    analysis=False, **opts)
            md_seconds = time.perf_counter() - t0
        worker_peak = int(result.fits["peak_rss"].max())
    bare = run_bare(result, str(path), opts, nthread=os.cpu_count() or 1)
    same_trees = all(
        bare["trees"][f"{row.key.rsplit('-', 1)[0]}-{['neither', 'donor', 'acceptor'].index(row.cls)}"] == row.n_trees
        for row in result.fits.itertuples()
    )
    ratio = md_seconds / bare["seconds"]
    train_ratio = result.timings["training"] / bare["seconds"]
    rows = [
        ("dataset", f"{args.genes} synthetic genes, {result.fits['rows'].max():,} rows, {len(result.features)} features"),
        ("fits", f"{len(result.fits)} ({args.n_folds} folds x 3 classes + 3 final), same trees: {same_trees}"),
        ("metadask train() wall (s)", f"{md_seconds:.1f} (training phase {result.timings['training']:.1f})"),
        ("bare XGBoost wall (s)", f"{bare['seconds']:.1f} (nthread={os.cpu_count()})"),
        ("ratio metadask / bare", f"{ratio:.2f} (training phase only: {train_ratio:.2f})"),
        ("peak memory metadask", f"client {client_mem.peak / 2**20:.0f} MiB, worker {worker_peak / 2**20:.0f} MiB"),
        ("peak memory bare", f"{bare['peak_rss'] / 2**20:.0f} MiB"),
    ]
    print(table(rows))
    payload = {
        "genes": args.genes, "n_estimators": args.n_estimators, "n_folds": args.n_folds, "workers": args.workers,
        "metadask_seconds": md_seconds, "metadask_training_seconds": result.timings["training"],
        "bare_seconds": bare["seconds"], "ratio": ratio, "training_ratio": train_ratio, "same_trees": same_trees,
        "client_peak_rss": client_mem.peak, "worker_peak_rss": worker_peak, "bare_peak_rss": bare["peak_rss"],
        "timings": result.timings,
    }
    write_result("orchestration" + ("_tiny" if args.tiny else ""), payload)
    return payload


if __name__ == "__main__":
    main()
