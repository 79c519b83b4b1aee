"""Client memory: the client's peak while it turns out-of-fold predictions into a run's results.

Until the out-of-fold predictions stayed on the workers, the one thing a training run's
client held that grew with the rows was the out-of-fold frame: every row's ids, label, base
scores, margins and calibrated probabilities. This case runs the client's own steps on N rows
exactly as ``train()`` does after the strategy's tasks have finished: the prediction parts
(each built on a worker by the strategies' own ``margins_frame``) are collected (now: made
compact where they are), calibrated (cross-fitted, per class), scored per fold
(``gene_cv_metrics.csv``) and written to ``oof_predictions.parquet``. Each variant and size runs in a fresh subprocess, so its
``VmHWM`` is that run's client peak; the RSS after imports is reported beside it (the floor
every client pays: NumPy, pandas, XGBoost, scikit-learn, Dask).

``--baseline PATH`` runs the same steps with an earlier checkout at PATH (its own API: the
parts concatenated with ``pd.concat``, the out-of-fold frame as it held it), side by side in
the same run. The growth benchmark measures the same client peak inside whole training runs.

``--analysis`` adds the analysis steps that read every row (evaluation summary, per-gene table,
performance plots; written as ``client_memory_analysis.json``).

    python -m benchmarks client_memory [--rows 1000000,8500000] [--parts 9] [--baseline PATH] [--analysis] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import write_result

ROOT = Path(__file__).resolve().parent.parent
ROWS_PER_GENE = 850

_STEPS = r'''
import json, os, sys, time
import numpy as np, pandas as pd
import xgboost, sklearn.linear_model, distributed  # what every client imports
import metadask.results as R
from metadask.analysis.metrics import fold_metrics
from metadask.config import TrainConfig
from metadask.dataset.schema import BASE_SCORE_COLUMNS, LABELS
from metadask.strategies.tasks import margins_frame
from metadask.training import calibrate

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
def cpu():
    t = os.times()
    return t.user + t.system

n_rows, n_parts, out, analysis = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
n_genes = max(n_parts, n_rows // %(per_gene)d)
genes = np.array([f"GENE{i:07d}" for i in range(n_genes)], dtype=object)
steps = {"imports": {"rss": status("VmRSS"), "peak": status("VmHWM"), "cpu": cpu()}}

def part(i):
    """Part i as a strategy's prediction task returns it (its own tree's margins_frame), built on a worker."""
    rng = np.random.default_rng(i)
    lo, hi = n_rows * i // n_parts, n_rows * (i + 1) // n_parts
    m = hi - lo
    g = genes[np.arange(lo, hi) * n_genes // n_rows]
    y = rng.choice(3, m, p=[0.97, 0.015, 0.015]).astype(np.int8)
    meta = pd.DataFrame({"gene_id": g, "position": np.arange(lo, hi, dtype=np.int64)})
    for k, c in enumerate(("neither_score", "donor_score", "acceptor_score")):
        meta[c] = np.clip(rng.random(m) * 0.3 + (y == k) * 0.6, 0.0, 1.0)
    margins = (rng.normal(size=(m, 3)) + 4.0 * (y[:, None] == np.arange(3)) - 2.5).astype(np.float32).astype(np.float64)
    return margins_frame(meta, y, margins, "gene_id")

if __name__ == "__main__":
    from distributed import Client, LocalCluster, wait
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0", memory_limit=0)
    client = Client(cluster)
    steps["imports"] = {"rss": status("VmRSS"), "peak": status("VmHWM"), "cpu": cpu()}  # with the scheduler, as in train()
    futures = [client.submit(part, i, pure=False) for i in range(n_parts)]
    wait(futures)  # the parts wait on the worker, as the strategies' prediction tasks do
    t = time.perf_counter()
    parts_api = hasattr(R, "OOFParts")
    if parts_api:  # the parts stay on the worker, made compact there; the client learns their sizes
        oof = R.OOFParts.collect(client, futures, [i %% 5 for i in range(n_parts)], genes,
                                 lambda fs, what: ((i, f.result()) for i, f in enumerate(fs)))
        steps["receive"] = {"rss": status("VmRSS"), "peak": status("VmHWM"), "cpu": cpu(), "seconds": time.perf_counter() - t}
    elif hasattr(R, "OOFAssembler"):
        asm = R.OOFAssembler(genes, n_parts)
        for i, f in enumerate(futures):
            p = f.result()
            f.release()
            asm.add(i, p, i %% 5)
            del p
        steps["receive"] = {"rss": status("VmRSS"), "peak": status("VmHWM"), "cpu": cpu(), "seconds": time.perf_counter() - t}
        oof = asm.frame()
    else:
        parts = client.gather(futures)
        oof = pd.concat([p.assign(fold=i %% 5) for i, p in enumerate(parts)], ignore_index=True)
        del parts
    del futures
    steps["assemble"] = {"rss": status("VmRSS"), "peak": status("VmHWM"), "cpu": cpu(), "seconds": time.perf_counter() - t}
    steps["assemble"]["frame_bytes"] = int(sum(oof.map_parts(lambda p: int(p.memory_usage(deep=True).sum()), what="bytes"))
                                            if parts_api else oof.memory_usage(deep=True).sum())
    class Model:
        features = list(BASE_SCORE_COLUMNS)
        calibrators = None
    result = R.TrainingResult("bench", "", Model(), oof, pd.DataFrame(), {}, [], {}, pd.Series(dtype=int))
    oof = None
    t = time.perf_counter()
    calibrate(result, TrainConfig())
    steps["calibrate"] = {"rss": status("VmRSS"), "peak": status("VmHWM"), "cpu": cpu(), "seconds": time.perf_counter() - t}
    t = time.perf_counter()
    import inspect
    fm = (fold_metrics(result.oof_parts) if parts_api else
          fold_metrics(result.oof, client) if "client" in inspect.signature(fold_metrics).parameters else fold_metrics(result.oof))
    steps["fold_metrics"] = {"rss": status("VmRSS"), "peak": status("VmHWM"), "cpu": cpu(), "seconds": time.perf_counter() - t}
    t = time.perf_counter()
    have = result.oof_parts.columns if parts_api else list(result.oof.columns)
    cols = [c for c in R.OOF_COLUMNS if c in have or c.startswith("raw_")] + [c for c in have if c.startswith("margin_")]
    if parts_api:
        from metadask.io import write_parquet_chunks
        write_parquet_chunks(os.path.join(out, "oof.parquet"), result.oof_parts.tables(cols))
    elif hasattr(R, "oof_tables"):
        from metadask.io import write_parquet_chunks
        write_parquet_chunks(os.path.join(out, "oof.parquet"), R.oof_tables(result.oof, cols))
    else:
        from metadask.io import write_parquet
        write_parquet(os.path.join(out, "oof.parquet"), result.oof[cols])
    steps["write"] = {"rss": status("VmRSS"), "peak": status("VmHWM"), "cpu": cpu(), "seconds": time.perf_counter() - t}
    if analysis:
        from metadask.analysis.evaluation import write_evaluation
        from metadask.analysis.run import performance_plots
        from pathlib import Path
        result.fold_metrics = fm
        t = time.perf_counter()
        if parts_api:
            summary, per_gene, data = write_evaluation(Path(out), result, "platt")
        elif "client" in inspect.signature(write_evaluation).parameters:
            summary, per_gene, data = write_evaluation(Path(out), result, "platt", client=client)
        else:
            (summary, per_gene), data = write_evaluation(Path(out), result, "platt"), None
        steps["evaluation"] = {"rss": status("VmRSS"), "peak": status("VmHWM"), "cpu": cpu(), "seconds": time.perf_counter() - t}
        t = time.perf_counter()
        performance_plots(Path(out), result, per_gene, *([data] if data is not None else []))
        steps["performance_plots"] = {"rss": status("VmRSS"), "peak": status("VmHWM"), "cpu": cpu(), "seconds": time.perf_counter() - t}
    pcols = ["prob_neither", "prob_donor", "prob_acceptor"]
    if parts_api:
        n = len(result.oof_parts)
        probs = (np.sum(result.oof_parts.map_parts(lambda p: p[pcols].to_numpy(dtype=np.float64).sum(axis=0), what="sums"), axis=0) / n).tolist()
    else:
        n = len(result.oof)
        probs = [float(np.mean(result.oof[c].to_numpy(), dtype=np.float64)) for c in pcols]
    print(json.dumps({"steps": steps, "peak": status("VmHWM"), "rows": n,
                      "meta_binary_f1": float(fm["meta_binary_f1"].mean()), "calibration": result.details.get("calibration_method"),
                      "prob_mean": probs, "file_bytes": os.path.getsize(os.path.join(out, "oof.parquet"))}))
    client.close()
    cluster.close()
'''


def run_variant(tree: Path, n_rows: int, n_parts: int, analysis: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-c", _STEPS % {"per_gene": ROWS_PER_GENE}, str(n_rows), str(n_parts), tmp, "1" if analysis else "0"],
                              capture_output=True, text=True, env=env, cwd=tmp)
    if proc.returncode != 0:
        raise RuntimeError(f"client_memory variant at {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks client_memory", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1000000,8500000", help="out-of-fold rows, comma-separated")
    ap.add_argument("--parts", type=int, default=9, help="prediction parts (tasks) the rows arrive in")
    ap.add_argument("--baseline", default=None, help="an earlier checkout to run side by side")
    ap.add_argument("--analysis", action="store_true",
                    help="also the analysis steps over the rows (evaluation summary, per-gene table, performance plots)")
    ap.add_argument("--tiny", action="store_true", help="smoke run: 20,000 rows in 4 parts")
    args = ap.parse_args(argv)
    sizes = [20_000] if args.tiny else [int(x) for x in args.rows.split(",")]
    parts = 4 if args.tiny else args.parts
    variants = {"current": ROOT} | ({"baseline": Path(args.baseline).resolve()} if args.baseline else {})
    runs = []
    for n in sizes:
        for name, tree in variants.items():
            r = run_variant(tree, n, parts, args.analysis)
            r.update(variant=name, tree=str(tree), n_rows=n, parts=parts)
            runs.append(r)
            floor = r["steps"]["imports"]["rss"]
            print(f"{name:>8} {n:>11,} rows: client peak {r['peak'] / 2**20:7.0f} MiB (imports {floor / 2**20:.0f} MiB, "
                  f"+{(r['peak'] - floor) / 2**20:.0f} MiB for the rows, {(r['peak'] - floor) / n:.0f} B/row); frame "
                  f"{r['steps']['assemble']['frame_bytes'] / 2**20:.0f} MiB; wall "
                  + ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in r["steps"].items() if "seconds" in v))
    ratios = {}
    for n in sizes:
        by = {r["variant"]: r for r in runs if r["n_rows"] == n}
        if "baseline" in by:
            ratios[str(n)] = {"peak": by["current"]["peak"] / by["baseline"]["peak"],
                              "over_imports": (by["current"]["peak"] - by["current"]["steps"]["imports"]["rss"])
                              / max(1, by["baseline"]["peak"] - by["baseline"]["steps"]["imports"]["rss"])}
            print(f"{n:,} rows: current / baseline client peak {ratios[str(n)]['peak']:.2f}x "
                  f"(above the imports {ratios[str(n)]['over_imports']:.2f}x)")
    payload = {"options": {"rows": sizes, "parts": parts, "baseline": args.baseline, "analysis": args.analysis}, "runs": runs, "ratios": ratios}
    write_result("client_memory_tiny" if args.tiny else "client_memory" + ("_analysis" if args.analysis else ""), payload)
    return payload


if __name__ == "__main__":
    main()
