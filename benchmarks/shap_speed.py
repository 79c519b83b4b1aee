"""SHAP speed: metadask's distributed pred_contribs vs ``shap.TreeExplainer`` in one process.

A three-booster one-vs-rest model (:class:`~metadask.models.boosted.BoosterModel`) is trained
on a synthetic dataset. Then, on the same model and the same rows (the analysis' stratified
sample, ``--rows``, default 10,000):

* **compute**: ``model.contributions`` (XGBoost ``pred_contribs``) on the sample's partitions
  already in the memory of ``--workers`` workers x 1 thread, vs ``shap.TreeExplainer(booster)
  .shap_values(x)`` per class on the same rows in memory in this process, with OpenMP limited
  to one thread (a worker's threads) and with every core.
* **end to end**: metadask's :func:`~metadask.analysis.shap.draw_sample` +
  :func:`~metadask.analysis.shap.compute_shap` (workers read their genes' rows, draw the
  sample, compute contributions; the client gathers sums and the top features' values), vs
  reading the same genes in this process, drawing the same rows and TreeExplainer (1 thread).

Reports the speedups (target >= 1.5x against the single-process baseline), the largest
absolute difference of the values (target < 1e-4) and the load average (the timings of a
shared machine vary with it).

    python -m benchmarks shap_speed [--rows 10000] [--genes 300] [--n-estimators 100] [--tiny]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks.common import synthetic, table, write_result


def train_model(dataset, index, features, n_estimators: int, max_depth: int, seed: int):
    """Three one-vs-rest boosters on every row (benchmark setup, not timed)."""
    import xgboost as xgb

    from metadask.dataset.schema import LABELS
    from metadask.models.boosted import BoosterModel, booster_from_bytes, booster_to_bytes
    from metadask.dataset.rows import gene_set, read_rows

    x, y, _ = read_rows(dataset, gene_set(index, index.genes), features)
    params = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": max_depth, "learning_rate": 0.1,
              "subsample": 0.8, "colsample_bytree": 0.8, "seed": seed, "nthread": os.cpu_count() or 1}
    dtrain = xgb.QuantileDMatrix(x, label=np.zeros(len(y), dtype=np.float32))
    boosters = []
    for k in range(len(LABELS)):
        dtrain.set_label((y == k).astype(np.float32))
        # the round trip through UBJSON bytes is what every strategy does: it drops the training
        # nthread, so prediction threads follow OpenMP's limit (a worker's threads)
        boosters.append(booster_from_bytes(booster_to_bytes(xgb.train(params, dtrain, num_boost_round=n_estimators))))
    return BoosterModel(boosters, features), len(y)


def tree_explainer(boosters, x: np.ndarray, threads: int | None) -> tuple[np.ndarray, float]:
    """(values (n, 3, F + 1) with the expected value as last column, seconds) in this process."""
    import shap
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    out = np.empty((len(x), len(boosters), x.shape[1] + 1))
    with threadpool_limits(limits=threads, user_api="openmp"):
        for k, b in enumerate(boosters):
            if threads is not None:
                b.set_param({"nthread": threads})
            e = shap.TreeExplainer(b)
            out[:, k, :-1] = e.shap_values(x)
            out[:, k, -1] = float(np.ravel(e.expected_value)[0])
            b.set_param({"nthread": 0})
    return out, time.perf_counter() - t0


def _contributions_only(part, model) -> float:
    """Worker side: TreeSHAP on a partition already in memory; returns the wall seconds."""
    from metadask.models.threads import limit_threads

    t0 = time.perf_counter()
    with limit_threads():
        model.contributions(part.x)
    return time.perf_counter() - t0


def client_read_and_explain(dataset, index, features, plan, boosters) -> tuple[np.ndarray, float]:
    """The single-process alternative end to end: read the sample genes here, draw the rows, explain."""
    from metadask.analysis.shap import choose_rows
    from metadask.dataset.source import gene_keys
    from metadask.dataset.rows import gene_set, read_rows

    t0 = time.perf_counter()
    genes = plan.genes
    x, y, meta = read_rows(dataset, gene_set(index, genes), features)
    rows = choose_rows(gene_keys(meta[dataset.gene_column]), y, plan.quotas, plan.seed)
    values, _ = tree_explainer(boosters, np.ascontiguousarray(x[rows]), threads=1)
    return values, time.perf_counter() - t0


def _warm() -> None:
    import metadask.analysis.shap  # noqa: F401
    import xgboost  # noqa: F401


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--genes", type=int, default=300)
    ap.add_argument("--n-estimators", type=int, default=100)
    ap.add_argument("--max-depth", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repeat", type=int, default=3, help="repetitions; the minimum time of each is reported")
    ap.add_argument("--tiny", action="store_true", help="smoke run: 30 genes, 500 rows, 10 trees")
    args = ap.parse_args(argv)
    if args.tiny:
        args.genes, args.rows, args.n_estimators, args.repeat = 30, 500, 10, 1
    from distributed import Client, LocalCluster

    from metadask.analysis.shap import compute_shap, draw_sample
    from metadask.dataset.index import build_gene_index
    from metadask.dataset.source import open_dataset

    path = synthetic(args.genes, genes_per_file=max(10, args.genes // 10))
    ds = open_dataset(str(path))
    index = build_gene_index(ds)
    features = list(ds.schema.feature_columns)
    model, n_train = train_model(ds, index, features, args.n_estimators, args.max_depth, args.seed)
    times: dict[str, list[float]] = {k: [] for k in ("dist_e2e", "dist_compute", "te1", "teall", "client_e2e")}
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0",
                      env={"OMP_WAIT_POLICY": "PASSIVE"}) as cluster, Client(cluster) as client:
        client.run(_warm)  # imports done before timing, as in a training run whose workers already fitted
        # the measurements are interleaved and repeated; the minimum of each is reported (a shared
        # machine's load only ever adds time)
        for rep in range(args.repeat):
            t0 = time.perf_counter()
            sample = draw_sample(client, ds, index, features, model, n_rows=args.rows, seed=args.seed,
                                 n_parts=2 * args.workers, contributions=True)
            res = compute_shap(client, sample)  # waits for every partition
            times["dist_e2e"].append(time.perf_counter() - t0)
            # compute only: TreeSHAP again on the partitions already in worker memory
            t1 = time.perf_counter()
            client.gather([client.submit(_contributions_only, p, sample.model, pure=False) for p in sample.parts])
            times["dist_compute"].append(time.perf_counter() - t1)
            parts = client.gather(sample.parts)  # for the comparison, not timed
            sample.release()
            x = np.concatenate([p.x for p in parts])
            contrib = np.concatenate([p.contributions for p in parts]).astype(np.float64)
            te1, t = tree_explainer(model.boosters, x, threads=1)
            times["te1"].append(t)
            teall, t = tree_explainer(model.boosters, x, threads=os.cpu_count() or 1)
            times["teall"].append(t)
            te_e2e, t = client_read_and_explain(ds, index, features, sample.plan, model.boosters)
            times["client_e2e"].append(t)
            assert np.array_equal(te_e2e, te1), "the client-side read drew the same rows"
            print(f"repeat {rep + 1}/{args.repeat}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    best = {k: min(v) for k, v in times.items()}
    dist_seconds, compute_seconds, te1_seconds, teall_seconds, e2e_seconds = (
        best["dist_e2e"], best["dist_compute"], best["te1"], best["teall"], best["client_e2e"])
    diff = float(np.abs(contrib - te1).max())
    diff_all = float(np.abs(contrib - teall).max())
    additivity = res.summary["additivity"]
    rows = [
        ("model", f"3 boosters x {args.n_estimators} trees, depth {args.max_depth}, {len(features)} features, "
                  f"trained on {n_train:,} rows"),
        ("sample", f"{len(x):,} rows of {res.summary['sample']['genes']} genes, {len(sample.parts)} partitions, "
                   f"{args.workers} workers x 1 thread; best of {args.repeat}"),
        ("compute: distributed pred_contribs (s)", f"{compute_seconds:.2f} (partitions in worker memory)"),
        ("compute: TreeExplainer 1 thread (s)", f"{te1_seconds:.2f} (rows in memory)"),
        (f"compute: TreeExplainer {os.cpu_count()} threads (s)", f"{teall_seconds:.2f}"),
        ("compute speedup vs 1 thread", f"{te1_seconds / compute_seconds:.2f}x (target >= 1.5x)"),
        (f"compute speedup vs {os.cpu_count()} threads", f"{teall_seconds / compute_seconds:.2f}x"),
        ("end to end: metadask (s)", f"{dist_seconds:.2f} (workers read + draw + pred_contribs, client gathers; "
                                     f"worker read {res.summary['seconds']['worker_read']:.1f} s, "
                                     f"TreeSHAP {res.summary['seconds']['worker_contributions']:.1f} s, summed)"),
        ("end to end: client read + TreeExplainer 1 thread (s)", f"{e2e_seconds:.2f}"),
        ("end-to-end speedup", f"{e2e_seconds / dist_seconds:.2f}x"),
        ("max |difference|", f"{diff:.2e} (all-core run {diff_all:.2e}; target < 1e-4)"),
        ("additivity max abs / rel error", f"{additivity['max_abs_error']:.2e} / {additivity['max_rel_error']:.2e}"),
    ]
    print(table(rows))
    payload = {
        "rows": int(len(x)), "genes": args.genes, "n_estimators": args.n_estimators, "max_depth": args.max_depth,
        "features": len(features), "workers": args.workers, "partitions": len(sample.parts),
        "distributed_compute_seconds": compute_seconds, "tree_explainer_1thread_seconds": te1_seconds,
        "tree_explainer_allcores_seconds": teall_seconds, "allcores_threads": os.cpu_count(),
        "compute_speedup_vs_1thread": te1_seconds / compute_seconds,
        "compute_speedup_vs_allcores": teall_seconds / compute_seconds,
        "end_to_end_distributed_seconds": dist_seconds, "end_to_end_client_seconds": e2e_seconds,
        "end_to_end_speedup": e2e_seconds / dist_seconds,
        "max_abs_difference": diff, "max_abs_difference_allcores": diff_all, "additivity": additivity,
        "worker_seconds": res.summary["seconds"], "load_average": os.getloadavg(), "repeat": args.repeat,
        "all_times": times,
    }
    write_result("shap_speed" + ("_tiny" if args.tiny else ""), payload)
    return payload


if __name__ == "__main__":
    main()
