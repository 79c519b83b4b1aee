"""Shared batch reads: a batch's three class fits as one task vs one task per class.

The batch ensemble runs a batch's three one-vs-rest fits as one task
(:func:`metadask.strategies.tasks.run_fits`: one read, one quantisation, labels set per
class) when it has at least two batches per worker thread. This case measures what that
saves on one batch, in the same run: the three fits as three ``run_fit`` tasks (each reads
and quantises the batch) and as one ``run_fits`` task, each variant on a fresh 1-worker x
1-thread LocalCluster (so the worker's ``VmHWM`` is that variant's peak), alternating the
variants over ``--repeats`` rounds and reporting medians. It checks that both give the same
boosters, byte for byte.

Defaults: one batch of 150 synthetic genes with 3- and 5-mers (~1,100 features: the wide
data where reading costs most), 20 genes per file, 30 trees with early stopping.

    python -m benchmarks shared_reads [--genes 150] [--kmers 3+5] [--n-estimators 30] [--repeats 3] [--tiny]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from benchmarks.common import synthetic, table, write_result


def _specs(path: str, n_estimators: int, seed: int = 42) -> tuple[Any, list[str], list[Any]]:
    from metadask.config import TrainConfig
    from metadask.dataset import build_gene_index, open_dataset
    from metadask.dataset.schema import LABELS
    from metadask.plan import eval_sample, split_validation
    from metadask.strategies.tasks import FitSpec, gene_set

    ds = open_dataset(path)
    index = build_gene_index(ds)
    cfg = TrainConfig(n_estimators=n_estimators, seed=seed)
    fit, valid = split_validation(index, index.genes, cfg.valid_size, seed)
    def gs(genes):
        return gene_set(index, genes)

    specs = [FitSpec(key=f"b0-{name}", scope="member", cls=k, batch=0, fit=gs(fit), valid=gs(valid),
                     eval_genes=tuple(eval_sample(fit, len(valid), seed)), n_estimators=n_estimators,
                     early_stopping_rounds=cfg.early_stopping_rounds, params=cfg.xgb_params())
             for k, name in enumerate(LABELS)]
    return ds, list(ds.schema.feature_columns), specs


def _run(variant: str, ds: Any, features: list[str], specs: list[Any]) -> dict[str, Any]:
    """One variant on a fresh 1-worker cluster: wall time, worker peak, the fits."""
    from distributed import Client, LocalCluster

    from metadask.config import setting
    from metadask.dataset.memory import process_peak_rss
    from metadask.strategies.tasks import run_fit, run_fits

    with LocalCluster(n_workers=1, threads_per_worker=1, memory_limit=0, dashboard_address=":0",
                      env=dict(setting("worker-env") or {})) as cluster, Client(cluster) as client:
        client.wait_for_workers(1)
        t0 = time.perf_counter()
        if variant == "per-class":  # the worker runs them one after another, as its one thread would
            outs = client.gather([client.submit(run_fit, ds, features, s, pure=False) for s in specs])
        else:
            outs = client.submit(run_fits, ds, features, specs, pure=False).result()
        wall = time.perf_counter() - t0
        peak = next(iter(client.run(process_peak_rss).values()))
    return {"variant": variant, "wall_seconds": wall, "worker_peak_rss": peak, "outs": outs}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genes", type=int, default=150)
    ap.add_argument("--kmers", default="3+5", help="k-mer sizes, e.g. 3 or 3+5")
    ap.add_argument("--genes-per-file", type=int, default=20)
    ap.add_argument("--n-estimators", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="smoke run: 20 genes, 3-mers, 5 trees, 1 round")
    args = ap.parse_args(argv)
    if args.tiny:
        args.genes, args.kmers, args.genes_per_file, args.n_estimators, args.repeats = 20, "3", 10, 5, 1
    from metadask.dataset.memory import format_bytes

    kmers = tuple(int(k) for k in args.kmers.split("+"))
    path = str(synthetic(args.genes, kmers, genes_per_file=args.genes_per_file))
    ds, features, specs = _specs(path, args.n_estimators)
    rounds: dict[str, list[dict[str, Any]]] = {"per-class": [], "shared": []}
    for r in range(args.repeats):
        for variant in (("per-class", "shared") if r % 2 == 0 else ("shared", "per-class")):
            m = _run(variant, ds, features, specs)
            rounds[variant].append(m)
            print(f"  round {r + 1}, {variant}: {m['wall_seconds']:.1f} s, worker peak "
                  f"{format_bytes(m['worker_peak_rss'])}", flush=True)
    same = all(a.booster == b.booster for a, b in zip(rounds["per-class"][0]["outs"], rounds["shared"][0]["outs"]))
    med = {v: statistics.median(m["wall_seconds"] for m in ms) for v, ms in rounds.items()}
    peak = {v: max(m["worker_peak_rss"] for m in ms) for v, ms in rounds.items()}
    outs = rounds["shared"][0]["outs"]
    speedup = med["per-class"] / med["shared"]
    print(table([
        ("batch", f"{args.genes} genes, {outs[0].rows:,} fit rows, {len(features)} features ({args.kmers}-mers)"),
        ("trees per class", ", ".join(str(o.n_trees) for o in outs)),
        ("three run_fit tasks (median)", f"{med['per-class']:.1f} s, worker peak {format_bytes(peak['per-class'])}"),
        ("one run_fits task (median)", f"{med['shared']:.1f} s, worker peak {format_bytes(peak['shared'])}"),
        ("speed-up", f"{speedup:.2f}x"),
        ("peak ratio shared / per-class", f"{peak['shared'] / peak['per-class']:.2f}"),
        ("identical boosters", same),
    ]))
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    payload = {
        "genes": args.genes, "kmers": args.kmers, "features": len(features), "fit_rows": outs[0].rows,
        "n_estimators": args.n_estimators, "repeats": args.repeats, "trees": [o.n_trees for o in outs],
        "rounds": {v: [{k: x for k, x in m.items() if k != "outs"} for m in ms] for v, ms in rounds.items()},
        "median_seconds": med, "worker_peak_rss": peak, "speedup": speedup, "identical_boosters": same,
        "load_average": os.getloadavg(),
    }
    write_result("shared_reads" + ("_tiny" if args.tiny else ""), payload)
    return payload


if __name__ == "__main__":
    main()
