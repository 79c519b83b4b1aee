"""Growth: wall time and peak memory of the single and batch-ensemble strategies vs genes.

Trains each strategy on synthetic datasets of 250, 1,000, 4,000 and 10,000 genes (3-mers,
400-1,300 rows per gene: about 0.2 M, 0.85 M, 3.4 M and 8.5 M rows, ~130 features) on a
fresh LocalCluster per run (2 workers x 1 thread by default), analysis off, and reports the
wall time of ``train()``, its training phase, the peak RSS per worker (sampled, and as
recorded by the fits) and the client's peak, so users see how cost grows with data.

Defaults: 5 folds, ``--n-estimators 100`` with early stopping (fewer trees than the CLI's
800 cap so the largest sizes finish; the growth *shape* is the point), the batch ensemble at
the CLI default ``max_genes_per_batch`` of 1,200 (so 1 batch up to 1,200 genes, then
ceil(genes / 1,200) members). Results are written after every run, so an interrupted run
keeps what finished.

**10,000 genes takes long:** generating the dataset (once; cached under
``$METADASK_BENCH_CACHE``, default /tmp/metadask-bench) and the single strategy's fits on
~8.5 M rows took 1.9 hours on a 2-core machine (8.2 GiB per worker; the batch ensemble 37
minutes, 1.45 GiB); use ``--sizes 250,1000,4000`` for a shorter run.

    python -m benchmarks growth [--sizes 250,1000,4000,10000] [--strategies single,batch-ensemble]
                                [--n-estimators 100] [--n-folds 5] [--max-genes-per-batch 1200]
                                [--workers 2] [--threads 1] [--memory-limit 20GiB] [--tiny]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import traceback
from typing import Any

from benchmarks.common import synthetic, write_result
from benchmarks.real_data import strategy_available, train_measured

SIZES = (250, 1000, 4000, 10000)
STRATEGIES = ("single", "batch-ensemble")


def growth_table(runs: list[dict[str, Any]]) -> str:
    head = ["genes", "rows", "strategy", "batches", "wall (s)", "training (s)", "x wall", "peak/worker (MiB)",
            "client (MiB)", "binary F1"]
    lines = [head]
    first: dict[str, float] = {}
    for r in runs:
        if r["status"] != "ok":
            lines.append([str(r["genes"]), "-", r["strategy"], "-", r["status"][:40], "", "", "", "", ""])
            continue
        first.setdefault(r["strategy"], r["wall_seconds"])
        lines.append([
            f"{r['genes']:,}", f"{r['rows']:,}", r["strategy"], str(r.get("n_batches", 1)), f"{r['wall_seconds']:.1f}",
            f"{r['training_seconds']:.1f}", f"{r['wall_seconds'] / first[r['strategy']]:.1f}",
            f"{r['worker_peak_rss'] / 2**20:.0f}", f"{r['client_peak_rss'] / 2**20:.0f}", f"{r['meta_binary_f1']:.3f}",
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines)


def earlier_runs(name: str, payload: dict[str, Any], sizes: list[int], strategies: list[str]) -> list[dict[str, Any]]:
    """Runs of an earlier result file made with the same options, for sizes or strategies not rerun now."""
    import json

    from benchmarks.common import RESULTS

    path = RESULTS / f"{name}.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    same = ("n_estimators", "n_folds", "max_genes_per_batch", "workers", "threads_per_worker")
    if any(old.get(k) != payload[k] for k in same):
        return []
    return [r for r in old.get("runs", []) if not (r["genes"] in sizes and r["strategy"] in strategies)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="numbers of genes, comma-separated")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--n-estimators", type=int, default=100)
    ap.add_argument("--n-folds", type=int, default=5)
    ap.add_argument("--max-genes-per-batch", type=int, default=1200, help="batch-ensemble only (CLI default 1200)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="threads per worker")
    ap.add_argument("--memory-limit", default=None,
                    help="memory limit per worker (default: the machine's memory shared by the workers), e.g. 20GiB")
    ap.add_argument("--tiny", action="store_true", help="smoke run: 20 and 40 genes, 10 trees, 2 folds, 20 genes/batch")
    ap.add_argument("--fresh", action="store_true",
                    help="drop the runs of an earlier result file (by default, runs of other sizes or strategies "
                         "made with the same options are kept)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.sizes, args.n_estimators, args.n_folds, args.max_genes_per_batch = "20,40", 10, 2, 20
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    name = "growth" + ("_tiny" if args.tiny else "")
    payload: dict[str, Any] = {
        "sizes": sizes, "strategies": strategies, "n_estimators": args.n_estimators, "n_folds": args.n_folds,
        "max_genes_per_batch": args.max_genes_per_batch, "workers": args.workers, "threads_per_worker": args.threads,
        "memory_limit": args.memory_limit,
        "runs": [], "dataset_seconds": {},
    }
    kept = [] if args.fresh else earlier_runs(name, payload, sizes, strategies)
    from metadask.dataset.index import build_gene_index
    from metadask.dataset.source import open_dataset

    if kept:
        print(f"  keeping {len(kept)} run(s) of an earlier {name}.json made with the same options (--fresh drops them)")
        payload["runs"] = kept
        payload["sizes"] = sorted({r["genes"] for r in kept} | set(sizes))
        payload["strategies"] = sorted({r["strategy"] for r in kept} | set(strategies))
    with tempfile.TemporaryDirectory() as tmp:
        for genes in sizes:
            t = time.perf_counter()
            path = str(synthetic(genes, genes_per_file=max(10, min(100, genes // 10))))
            payload["dataset_seconds"][str(genes)] = time.perf_counter() - t
            ds = open_dataset(path)
            index = build_gene_index(ds)
            parquet_bytes = sum(os.path.getsize(f) for f in ds.files)
            for strategy in strategies:
                rec: dict[str, Any] = {"genes": genes, "rows": index.n_rows, "parquet_bytes": parquet_bytes,
                                       "strategy": strategy}
                why = strategy_available(strategy)
                if why:
                    payload["runs"].append({**rec, "status": why})
                    print(f"  {genes} genes, {strategy}: {why}", flush=True)
                    continue
                opts: dict[str, Any] = {"n_folds": args.n_folds, "n_estimators": args.n_estimators, "seed": 42}
                if strategy == "batch-ensemble":
                    opts["max_genes_per_batch"] = args.max_genes_per_batch
                print(f"  {genes} genes ({index.n_rows:,} rows), {strategy}: training ...", flush=True)
                try:
                    m = train_measured(path, os.path.join(tmp, f"{genes}-{strategy}"), strategy, opts,
                                       workers=args.workers, threads=args.threads, memory_limit=args.memory_limit)
                except Exception as exc:
                    traceback.print_exc()
                    payload["runs"].append({**rec, "status": f"failed: {type(exc).__name__}: {exc}"[:500]})
                    write_result(name, payload)
                    continue
                result = m.pop("result")
                from metadask.analysis.metrics import prediction_metrics

                rec.update(status="ok", features=len(result.features), fits=int(len(result.fits)),
                           n_batches=int(result.details.get("n_batches", 1)),
                           meta_binary_f1=prediction_metrics(result.oof)["meta_binary_f1"], **m)  # after the client's peak
                del result
                payload["runs"].append(rec)
                payload["runs"].sort(key=lambda r: (r["genes"], r["strategy"]))
                print(f"  {genes} genes, {strategy}: {rec['wall_seconds']:.1f} s, peak/worker "
                      f"{rec['worker_peak_rss'] / 2**20:.0f} MiB", flush=True)
                write_result(name, payload)  # after every run: a long run keeps what finished
    print(growth_table(payload["runs"]))
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    write_result(name, payload)
    return payload


if __name__ == "__main__":
    main()
