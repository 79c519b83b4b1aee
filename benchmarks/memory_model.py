"""Memory model accuracy: estimated vs measured peak memory of one training task.

For each synthetic dataset size (3-mers and 3+5-mers), one batch-ensemble member fit on
every gene of the dataset (fit genes + validation genes inside the batch, a held-in eval
sample, early stopping) runs on a fresh Dask worker (1 worker x 1 thread, no memory limit;
a new LocalCluster for each task). The measured peak is the worker process's peak
RSS (``VmHWM``, what the worker's memory limit sees); the estimate is
:func:`metadask.plan.task_peak_bytes`. Target: measured within +-25 % of the estimate.

    python -m benchmarks memory_model [--sizes 50:3,400:3,150:3+5:150,400:3+5:25,...]
                                      [--n-estimators 10] [--fit] [--worker-env K=V] [--tiny]

``--fit`` also prints least-squares constants for the model from the measurements (to
recalibrate :mod:`metadask.plan` on other machines or library versions).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from benchmarks.common import synthetic, table, write_result
from metadask.dataset.memory import process_peak_rss

DEFAULT_SIZES = "50:3,150:3,400:3,400:3:400,20:3+5:10,50:3+5,150:3+5,150:3+5:150,400:3+5,400:3+5:100,400:3+5:25"


def parse_sizes(text: str) -> list[tuple[int, tuple[int, ...], int]]:
    """``genes:k[+k...][:genes_per_file]`` items, comma-separated."""
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        genes, ks = int(parts[0]), tuple(int(k) for k in parts[1].split("+"))
        out.append((genes, ks, int(parts[2]) if len(parts) > 2 else 50))
    return out


def _worker_rss() -> dict[str, int]:
    """Runs on the worker: RSS and peak RSS with metadask's task modules imported."""
    import gc

    import psutil

    import metadask.models.ensemble  # noqa: F401
    import metadask.strategies.tasks  # noqa: F401

    gc.collect()
    return {"rss": psutil.Process().memory_info().rss,
            "peak": process_peak_rss()}


def measure(client: Any, path: str, n_estimators: int, seed: int = 42) -> dict[str, Any]:
    """Run one member fit on every gene of ``path`` on a fresh worker; return sizes and peaks."""
    from metadask.config import TrainConfig
    from metadask.dataset import build_gene_index, open_dataset
    from metadask.plan import eval_sample, max_file_rows, split_validation, task_peak_bytes
    from metadask.strategies.tasks import FitSpec, GeneSet, run_fit

    ds = open_dataset(path)
    index = build_gene_index(ds)
    features = list(ds.schema.feature_columns)
    cfg = TrainConfig(n_estimators=n_estimators, seed=seed)
    fit, valid = split_validation(index, index.genes, cfg.valid_size, seed)
    gs = lambda genes: GeneSet(tuple(sorted(genes)), tuple(index.files_for(genes)))  # noqa: E731
    spec = FitSpec(key="memory-model", scope="member", cls=1, fit=gs(fit), valid=gs(valid),
                   eval_genes=tuple(eval_sample(fit, len(valid), seed)), n_estimators=n_estimators,
                   early_stopping_rounds=cfg.early_stopping_rounds, params=cfg.xgb_params())
    idle = next(iter(client.run(_worker_rss).values()))
    t0 = time.perf_counter()
    out = client.submit(run_fit, ds, features, spec, pure=False).result()
    seconds = time.perf_counter() - t0
    file_rows = max_file_rows(index)
    estimate = task_peak_bytes(index.n_rows, len(features), file_rows=file_rows)
    return {
        "dataset": path, "genes": index.n_genes, "rows": index.n_rows, "features": len(features),
        "file_rows": min(file_rows, index.n_rows), "matrix_bytes": index.n_rows * len(features) * 4,
        "idle_worker_rss": idle["rss"], "measured_peak": out.peak_rss, "estimate": estimate,
        "error": out.peak_rss / estimate - 1.0, "seconds": seconds, "trees": out.n_trees,
    }


def fit_constants(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Non-negative least squares of the model's terms on the measured peaks (relative errors)."""
    from scipy.optimize import nnls

    a = np.array([[1.0, r["rows"] * r["features"], r["rows"], r["file_rows"] * r["features"], r["features"]]
                  for r in rows])
    y = np.array([r["measured_peak"] for r in rows], dtype=np.float64)
    w = 1.0 / y  # minimise relative error
    coef, _ = nnls(a * w[:, None], y * w)
    names = ["TASK_BASE_BYTES", "BYTES_PER_VALUE", "BYTES_PER_ROW", "READ_BYTES_PER_VALUE", "BYTES_PER_FEATURE"]
    return dict(zip(names, map(float, coef)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help="genes:kmers[:genes_per_file], comma-separated")
    ap.add_argument("--n-estimators", type=int, default=10)
    ap.add_argument("--fit", action="store_true", help="print least-squares constants for the model")
    ap.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra worker environment (default: metadask's worker-env setting), e.g. "
                         "ARROW_DEFAULT_MEMORY_POOL=jemalloc")
    ap.add_argument("--tiny", action="store_true", help="smoke run: 20 and 40 genes (3-mers), 3 trees")
    args = ap.parse_args(argv)
    if args.tiny:
        args.sizes, args.n_estimators = "20:3:10,40:3:10", 3
    from distributed import Client, LocalCluster

    from metadask import plan
    from metadask.config import setting
    from metadask.dataset.memory import format_bytes

    env = {**dict(setting("worker-env") or {}), **dict(kv.split("=", 1) for kv in args.worker_env)}
    results = []
    for genes, ks, per_file in parse_sizes(args.sizes):
        path = synthetic(genes, ks, genes_per_file=per_file)
        # a fresh worker process per task, so its peak RSS is this task's alone
        with LocalCluster(n_workers=1, threads_per_worker=1, memory_limit=0, dashboard_address=":0",
                          env=env) as cluster, Client(cluster) as client:
            r = measure(client, str(path), args.n_estimators)
        r["kmers"], r["genes_per_file"] = "+".join(map(str, ks)), per_file
        results.append(r)
        print(f"  {genes} genes {r['kmers']}-mers: {r['rows']:,} rows x {r['features']} features, measured "
              f"{format_bytes(r['measured_peak'])}, estimate {format_bytes(r['estimate'])} ({r['error']:+.1%})", flush=True)
    header = f"{'dataset':<22} {'rows':>9} {'feat':>5} {'matrix':>10} {'measured':>10} {'estimate':>10} {'error':>7}"
    lines = [header] + [
        f"{str(r['genes']) + ' genes ' + r['kmers'] + '-mer/' + str(r['genes_per_file']):<22} {r['rows']:>9,} "
        f"{r['features']:>5} {format_bytes(r['matrix_bytes']):>10} {format_bytes(r['measured_peak']):>10} "
        f"{format_bytes(r['estimate']):>10} {r['error']:>+7.1%}"
        for r in results
    ]
    print("\n".join(lines))
    worst = max(abs(r["error"]) for r in results)
    summary = [("worst |error|", f"{worst:.1%} (target <= 25 %)"), ("within target", worst <= 0.25)]
    payload: dict[str, Any] = {
        "n_estimators": args.n_estimators, "worker_env": env, "results": results, "worst_abs_error": worst, "within_target": worst <= 0.25,
        "constants": {"TASK_BASE_BYTES": plan.TASK_BASE_BYTES, "BYTES_PER_VALUE": plan.BYTES_PER_VALUE,
                      "BYTES_PER_ROW": plan.BYTES_PER_ROW, "READ_BYTES_PER_VALUE": plan.READ_BYTES_PER_VALUE,
                      "BYTES_PER_FEATURE": plan.BYTES_PER_FEATURE},
    }
    if args.fit and len(results) >= 5:
        payload["fitted_constants"] = fitted = fit_constants(results)
        summary.append(("least-squares constants", ", ".join(f"{k}={v:,.1f}" for k, v in fitted.items())))
    print(table(summary))
    write_result("memory_model" + ("_tiny" if args.tiny else "") + ("_worker_env" if args.worker_env else ""), payload)
    return payload


if __name__ == "__main__":
    main()
