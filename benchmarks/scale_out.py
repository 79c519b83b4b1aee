"""Scale-out: the batch ensemble on 2 workers x 1 thread vs 1 worker x 1 thread, same batches.

Both runs train the same synthetic dataset with the same options (so the same batches, fits
and predictions: the benchmark checks the out-of-fold margins are identical); the figure is
the ratio of the training phase's wall time (1 worker / 2 workers; target >= 1.8). The
machine needs at least two idle cores for the ratio to mean anything: the load average is
recorded with the result.

    python -m benchmarks scale_out [--genes 400] [--max-genes-per-batch 50]
                                   [--n-estimators 100] [--repeats 1] [--tiny]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

from benchmarks.common import synthetic, table, write_result


def train_on(n_workers: int, path: str, out: str, opts: dict[str, Any]) -> Any:
    from distributed import Client, LocalCluster

    import metadask

    with LocalCluster(n_workers=n_workers, threads_per_worker=1, dashboard_address=":0",
                      env={"OMP_WAIT_POLICY": "PASSIVE"}) as cluster, Client(cluster) as client:
        client.wait_for_workers(n_workers)
        return metadask.train(path, out, client=client, strategy="batch-ensemble", overwrite=True, **opts)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genes", type=int, default=400)
    ap.add_argument("--max-genes-per-batch", type=int, default=50)
    ap.add_argument("--n-estimators", type=int, default=100)
    ap.add_argument("--n-folds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1, help="alternate 1- and 2-worker runs this many times; best of each")
    ap.add_argument("--tiny", action="store_true", help="smoke run: 40 genes, 15 genes/batch, 10 trees")
    args = ap.parse_args(argv)
    if args.tiny:
        args.genes, args.max_genes_per_batch, args.n_estimators = 40, 15, 10
    import numpy as np

    path = str(synthetic(args.genes, genes_per_file=max(10, args.genes // 10)))
    opts = {"n_folds": args.n_folds, "n_estimators": args.n_estimators, "analysis": False, "seed": 42,
            "max_genes_per_batch": args.max_genes_per_batch}
    load_before = os.getloadavg()
    times: dict[int, list[float]] = {1: [], 2: []}
    totals: dict[int, list[float]] = {1: [], 2: []}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for n in (1, 2):
                t = time.perf_counter()
                r = train_on(n, path, os.path.join(tmp, f"w{n}-{rep}"), opts)
                totals[n].append(time.perf_counter() - t)
                times[n].append(r.timings["training"])
                results[n] = r
                r.oof  # read from the run's oof_predictions.parquet while the directory exists
                print(f"  {n} worker(s): training {r.timings['training']:.1f} s, train() {totals[n][-1]:.1f} s", flush=True)
    key = ["gene", "position"]
    margins = [f"margin_{c}" for c in ("neither", "donor", "acceptor")]
    a, b = (results[n].oof.sort_values(key, kind="stable")[margins].to_numpy() for n in (1, 2))
    identical = bool(np.array_equal(a, b)) and results[1].details["batches"] == results[2].details["batches"]
    one, two = min(times[1]), min(times[2])
    ratio = one / two
    rows = [
        ("dataset", f"{args.genes} synthetic genes, {len(results[1].oof):,} rows, {len(results[1].features)} features"),
        ("batches", f"{results[1].details['n_batches']} of <= {results[1].details['genes_per_batch']} genes, "
                    f"{len(results[1].fits)} fits, {args.n_estimators} trees max"),
        ("1 worker x 1 thread (s)", f"{one:.1f} training phase (train() {min(totals[1]):.1f})"),
        ("2 workers x 1 thread (s)", f"{two:.1f} training phase (train() {min(totals[2]):.1f})"),
        ("speed-up (1 / 2 workers)", f"{ratio:.2f} (target >= 1.8)"),
        ("identical predictions", identical),
        ("load average before", " ".join(f"{v:.1f}" for v in load_before) + f" on {os.cpu_count()} cores"),
    ]
    print(table(rows))
    payload = {
        "genes": args.genes, "max_genes_per_batch": args.max_genes_per_batch, "n_estimators": args.n_estimators,
        "n_batches": results[1].details["n_batches"], "fits": len(results[1].fits),
        "one_worker_seconds": times[1], "two_worker_seconds": times[2], "one_worker_total": totals[1],
        "two_worker_total": totals[2], "speedup": ratio, "identical_predictions": identical,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
    }
    write_result("scale_out" + ("_tiny" if args.tiny else ""), payload)
    return payload


if __name__ == "__main__":
    main()
