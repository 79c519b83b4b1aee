"""Final model: refit on every gene vs the CV-ensemble of the fold models, on held-out genes.

Out-of-fold quality cannot tell them apart (both report the fold models' out-of-fold
scores, identical by construction), so this case holds out a fifth of the genes, trains
``single`` with ``--final-model refit`` and ``--final-model cv-ensemble`` on the rest (no
analysis), and scores the held-out genes with each calibrated final model: binary F1 at 0.5
and AP (splice = donor + acceptor), AP per class. It also reports the held-out prediction
CPU of each model and the training CPU-seconds (client + workers); the first variant's
includes the cluster's warm-up (imports on the workers), so compare training CPU with
``cpu_profile``, which starts a fresh process per run.

    python -m benchmarks final_model [--dataset PATH | --genes 300] [--n-estimators 100] [--tiny]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import numpy as np


def _split(path: str, out: str, frac: float, seed: int) -> tuple[str, str]:
    """Write the held-in and held-out genes of ``path`` as two parquet datasets."""
    import pandas as pd

    from metadask.dataset.source import open_dataset

    ds = open_dataset(path)
    genes = sorted({g for f in ds.files for g in pd.read_parquet(f, columns=[ds.gene_column])[ds.gene_column].astype(str)})
    rng = np.random.default_rng(seed)
    held_out = set(rng.choice(genes, size=max(2, int(len(genes) * frac)), replace=False))
    dirs = (os.path.join(out, "train", "master"), os.path.join(out, "test", "master"))
    for d in dirs:
        os.makedirs(d)
    for i, f in enumerate(ds.files):
        frame = pd.read_parquet(f)
        out_mask = frame[ds.gene_column].astype(str).isin(held_out)
        for d, part in zip(dirs, (frame[~out_mask], frame[out_mask])):
            if len(part):
                part.to_parquet(os.path.join(d, f"batch_{i:05d}.parquet"), index=False)
    return os.path.dirname(dirs[0]), os.path.dirname(dirs[1])


def _cpu(children: bool = True) -> float:
    import psutil

    p = psutil.Process()
    total = sum(p.cpu_times()[:2])
    for c in p.children(recursive=True) if children else ():
        try:
            total += sum(c.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def main(argv: list[str] | None = None) -> dict:
    from benchmarks.common import synthetic, table, write_result

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=None)
    ap.add_argument("--genes", type=int, default=300)
    ap.add_argument("--n-estimators", type=int, default=100)
    ap.add_argument("--n-folds", type=int, default=5)
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)
    if args.tiny:
        args.genes, args.n_estimators, args.n_folds = 30, 10, 2
    from distributed import Client, LocalCluster
    from sklearn.metrics import average_precision_score, f1_score

    import metadask
    from metadask.dataset.rows import GeneSet, read_rows
    from metadask.dataset.source import open_dataset

    path = args.dataset or str(synthetic(args.genes, genes_per_file=max(10, args.genes // 10)))
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(
        n_workers=2, threads_per_worker=1, dashboard_address=":0", env={"OMP_WAIT_POLICY": "PASSIVE"}
    ) as cluster, Client(cluster) as client:
        train_path, test_path = _split(path, tmp, args.holdout, 42)
        test = open_dataset(test_path)
        for variant in ("refit", "cv-ensemble"):
            c0 = _cpu()
            r = metadask.train(train_path, os.path.join(tmp, variant), client=client, strategy="single", analysis=False,
                               n_folds=args.n_folds, n_estimators=args.n_estimators, final_model=variant)
            cpu = _cpu() - c0
            model = metadask.load_model(os.path.join(tmp, variant, "model"))
            from metadask.dataset.index import build_gene_index

            genes = tuple(build_gene_index(test).genes)
            x, y, _ = read_rows(test, GeneSet(genes, tuple(test.files)), model.features)
            t0 = time.process_time()
            p = model.predict_proba(x)
            predict_cpu = time.process_time() - t0
            splice = p[:, 1] + p[:, 2]
            q = {"binary_f1": f1_score(y != 0, splice >= 0.5), "binary_ap": average_precision_score(y != 0, splice)}
            q.update({f"ap_{c}": average_precision_score(y == k, p[:, k]) for k, c in enumerate(("neither", "donor", "acceptor"))})
            res[variant] = {"train_cpu_seconds": round(cpu, 1), "predict_cpu_seconds": round(predict_cpu, 3),
                            "held_out_rows": int(len(y)), "quality": {k: round(float(v), 4) for k, v in q.items()},
                            "trees": int(sum(b.num_boosted_rounds() for b in getattr(model, "boosters", []))
                                         or sum(b.num_boosted_rounds() for m in model.members for b in m))}
    rows = [("data", f"{path}, {args.holdout:.0%} of genes held out")]
    for v, r in res.items():
        rows.append((v, f"train {r['train_cpu_seconds']} CPU-s, {r['trees']} trees, predict {r['predict_cpu_seconds']} CPU-s "
                        f"on {r['held_out_rows']:,} rows; " + ", ".join(f"{k} {q:.4f}" for k, q in r["quality"].items())))
    delta = {k: round(res["cv-ensemble"]["quality"][k] - res["refit"]["quality"][k], 4) for k in res["refit"]["quality"]}
    rows.append(("cv-ensemble - refit", ", ".join(f"{k} {v:+.4f}" for k, v in delta.items())))
    print(table(rows))
    name = "final_model_tiny" if args.tiny else f"final_model_{'real' if args.dataset else str(args.genes) + 'genes'}"
    write_result(name, {"dataset": path, "n_estimators": args.n_estimators, "n_folds": args.n_folds, "holdout": args.holdout,
                        "variants": res, "delta": delta, "load_average": os.getloadavg()})
    return res


if __name__ == "__main__":
    main()
