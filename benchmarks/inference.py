"""Inference: rows per second for a single model and for ensembles of K members.

Builds the models directly from XGBoost fits on a synthetic dataset (so the number of trees
is fixed and known): the single model is three one-vs-rest boosters (``BoosterModel``) of
``--n-estimators`` trees (default 100: the real fly models' boosters average ~105 after early
stopping) trained on every gene; an ensemble of K members
(``metadask.models.ensemble.EnsembleModel``, weighted margins) holds K such groups, member j
trained on the j-th of K gene batches. Each group is trained on a sample of at most
``--fit-rows`` rows of its genes (trees reach full depth either way; prediction cost depends
on the number of trees and their depth, and building the models stays short). Every model has Platt calibrators (fit in-sample on its
own predictions: they only matter here for their cost). The batch-ensemble strategy builds
the same ensemble type, so its predictions cost what is measured here.

Measured, on the dataset's rows:

* **in process:** ``model.predict_proba(frame)`` on a pandas frame of every column (what a
  user passes); XGBoost uses its default threads (every core; ``OMP_WAIT_POLICY=PASSIVE``
  unless set otherwise); median of ``--repeats`` rounds after one warm-up call, the models
  interleaved in each round;
* **on a LocalCluster** (2 workers x 1 thread by default): ``metadask.predict_dataset(model,
  dataset, out)``, which reads the parquet files on the workers, scores each partition and
  writes it as a parquet part; the cluster is started (and warmed by one call) outside the timing.

Rows per second = rows / median seconds. A K-member ensemble does about K times the trees'
work of the single model; the fixed costs (turning the frame into a float32 matrix, measured
alone as a baseline in the same rounds; calibration; for ``predict_dataset`` reading parquet
and writing the result) are the same for both.

**Scan** (what ``metadask predict`` does on a genome): the dataset's rows without labels,
written once as a parquet file and hard-linked as many times as it takes to reach each of the
``--scan-rows`` sizes (default 2.5 M and 25 M rows, 10x apart; one partition per file), scored
by ``predict_dataset`` with the single model on the LocalCluster (read, score, write parquet
parts on the workers). Measured: rows per second next to bare XGBoost ``inplace_predict`` of
the same three boosters on the same rows (the float32 matrix already in memory, as many
threads as the cluster has: the trees' work alone) in the same run, their ratio, and the
client's peak RSS during each run (sampled every 50 ms), which must not grow with the rows.
``--real`` adds the same comparison on every gene-body position of the 60 shared real fly
genes (``real_fly_fullbody_3mer_60``), scored by boosters fit on ``real_fly_3mer``.

    python -m benchmarks inference [--genes 200] [--n-estimators 100] [--members 2,4,8] [--fit-rows 20000]
                                   [--repeats 3] [--workers 2] [--scan-rows 2500000,25000000] [--real] [--tiny]
"""

from __future__ import annotations

import argparse
import os

# Before XGBoost (libgomp) loads: idle OpenMP threads sleep instead of spinning, as metadask
# sets for its workers; on a shared machine spinning threads steal the cores that do the work.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import statistics
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks.common import PeakRSS, synthetic, table, write_result


def build_models(path: str, n_estimators: int, max_members: int, fit_rows: int,
                 seed: int = 42) -> tuple[Any, list[Any], Any, dict]:
    """The single model, ``max_members`` member groups of boosters, the frame and facts."""
    import pandas as pd

    from metadask.config import TrainConfig
    from metadask.dataset.schema import encode_labels
    from metadask.dataset.source import open_dataset
    from metadask.dataset.synthetic import LEAKY_COLUMNS
    from metadask.models.base import sigmoid
    from metadask.models.boosted import BoosterModel, booster_from_bytes, fit_binary
    from metadask.models.calibration import fit_calibrator

    ds = open_dataset(path)
    frame = pd.concat([ds.read_file(f) for f in ds.files], ignore_index=True)
    # the synthetic data's deliberately leaky columns would make trees trivial (screening drops them)
    features = [c for c in ds.schema.feature_columns if c not in LEAKY_COLUMNS]
    x = frame[features].to_numpy(dtype=np.float32)
    y = encode_labels(frame[ds.label_column], ds.label_column)
    params = TrainConfig().xgb_params()
    # one thread: on a loaded machine OpenMP threads spin-waiting at each round's barriers made
    # the (untimed) model building ~5x slower than its work; one thread has no barriers
    nthread = 1

    rng = np.random.default_rng(seed)

    def group(rows: np.ndarray) -> list[Any]:
        # a row sample is enough for full-depth trees: only the trees' number and depth set the cost
        if len(rows) > fit_rows:
            rows = np.sort(rng.choice(rows, size=fit_rows, replace=False))
        return [booster_from_bytes(fit_binary(x[rows], (y[rows] == k).astype(np.float32), params, n_estimators,
                                              nthread=nthread).booster) for k in range(3)]

    t0 = time.perf_counter()
    single_boosters = group(np.arange(len(y)))
    genes = np.array(sorted(frame[ds.gene_column].unique()))
    batch_of_gene = dict(zip(genes, np.random.default_rng(seed).permutation(len(genes)) % max_members))
    batch = frame[ds.gene_column].map(batch_of_gene).to_numpy()
    members = [group(np.flatnonzero(batch == j)) for j in range(max_members)]
    fit_seconds = time.perf_counter() - t0

    single = BoosterModel(single_boosters, features)
    sample = np.random.default_rng(seed).choice(len(y), size=min(len(y), 20_000), replace=False)
    raw = sigmoid(single.predict_margin(x[sample]))
    single.calibrators = [fit_calibrator(raw[:, k], y[sample] == k, "platt") for k in range(3)]
    facts = {"rows": int(len(frame)), "genes": int(len(genes)), "features": len(features),
             "columns_in_frame": int(frame.shape[1]), "fit_seconds": fit_seconds}
    return single, members, frame, facts


def ensemble(members: list[Any], features: list[str], calibrators: list[Any]) -> Any:
    from metadask.models.ensemble import EnsembleModel

    model = EnsembleModel(members, np.ones((len(members), 3)), features, method="voting")
    model.calibrators = list(calibrators)
    return model


def timed(fns: dict[str, Any], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function: one warm-up call each, then ``repeats`` rounds.

    Rounds interleave the functions, so a change of machine load affects them alike.
    """
    for fn in fns.values():
        fn()  # warm-up: first-call costs (imports, thread pools, graph pickling) are not throughput
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t)
    return out


def scan_files(frame: Any, label_column: str, n_files: int, where: str) -> tuple[str, int]:
    """A directory of ``n_files`` hard links to one unlabelled parquet file of ``frame``; its rows."""
    import shutil

    os.makedirs(where, exist_ok=True)
    base = os.path.join(where, "base.parquet")
    if not os.path.exists(base):
        # floats stored as float32, like the shared full-body data (the model reads float32 anyway)
        scan = frame.drop(columns=[label_column])
        scan = scan.astype({c: "float32" for c in scan.columns if scan[c].dtype == "float64"})
        scan.to_parquet(base, index=False)
    out = os.path.join(where, f"scan_{n_files}")
    os.makedirs(out, exist_ok=True)
    for i in range(n_files):
        target = os.path.join(out, f"part_{i:05d}.parquet")
        if not os.path.exists(target):
            try:
                os.link(base, target)  # the same bytes: no disk space, the page cache serves every read
            except OSError:
                shutil.copyfile(base, target)
    return out, n_files * len(frame)


def bare_rows_per_s(boosters: list[Any], x: np.ndarray, nthread: int, repeats: int) -> tuple[float, list[float]]:
    """Bare XGBoost: ``inplace_predict`` (margins) of each booster on the float32 matrix."""
    for b in boosters:
        b.set_param({"nthread": nthread})

    def run() -> None:
        for b in boosters:
            b.inplace_predict(x, predict_type="margin")

    secs = timed({"bare": run}, repeats)["bare"]
    return len(x) / statistics.median(secs), secs


def scan(model: Any, frame: Any, label_column: str, sizes: list[int], client: Any, workers: int,
         repeats: int, tmp: str) -> dict[str, Any]:
    """predict_dataset on unlabelled scans of each size vs bare inplace_predict; client peak RSS."""
    import copy

    import psutil

    from metadask.inference import predict_dataset

    boosters = [copy.copy(b) for b in model.boosters]  # own thread setting, the model's untouched
    x = np.ascontiguousarray(frame[model.features].to_numpy(dtype=np.float32))
    runs = []
    out = os.path.join(tmp, "scan_out")
    # bare rows/s measured before every scan run and after the last one: each run's ratio uses the
    # mean of the bare figures on either side of it (the machine's load changes over minutes)
    bare = [bare_rows_per_s(boosters, x, workers, repeats)[0]]
    print(f"  scan: bare inplace_predict, {workers} threads: {bare[-1]:,.0f} rows/s", flush=True)
    # files per size: the first size rounded to whole files, the others in exact proportion to it
    first = max(1, round(sizes[0] / len(frame)))
    for i, size in enumerate(sizes):
        path, rows = scan_files(frame, label_column, max(1, round(first * size / sizes[0])), os.path.join(tmp, "scan"))
        if i == 0:  # warm-up (imports, the model's first trip to the workers), untimed
            predict_dataset(model, path, out, overwrite=True, client=client)
        before = psutil.Process().memory_info().rss
        with PeakRSS(children=False) as peak:
            t = time.perf_counter()
            n = predict_dataset(model, path, out, overwrite=True, client=client)
            secs = time.perf_counter() - t
        assert n == rows, (n, rows)
        bare.append(bare_rows_per_s(boosters, x, workers, repeats)[0])
        around = (bare[-2] + bare[-1]) / 2
        runs.append({"rows": rows, "files": rows // len(frame), "seconds": secs, "rows_per_s": rows / secs,
                     "bare_inplace_rows_per_s": around, "ratio_bare_over_predict": around * secs / rows,
                     "client_rss_before": before, "client_peak_rss": peak.peak,
                     "client_peak_growth": peak.peak - before})
        print(f"  scan: predict_dataset, {rows:,} rows: {rows / secs:,.0f} rows/s (bare around it {around:,.0f}: "
              f"x{around * secs / rows:.2f}); client peak RSS {peak.peak / 2**20:,.0f} MiB "
              f"(+{(peak.peak - before) / 2**20:,.0f} MiB)", flush=True)
    largest = runs[-1]
    return {
        "bare_inplace_rows_per_s": statistics.median(bare), "bare_inplace_series": bare, "bare_rows": len(x),
        "bare_threads": workers, "runs": runs, "predict_rows_per_s": largest["rows_per_s"],
        "ratio_bare_over_predict": largest["ratio_bare_over_predict"],
        "client_peak_rss_ratio_largest_over_smallest": runs[-1]["client_peak_rss"] / runs[0]["client_peak_rss"],
    }


def real_scan(client: Any, workers: int, n_estimators: int, repeats: int, tmp: str) -> dict[str, Any]:
    """Every gene-body position of the 60 shared fly genes, scored by a model of the real sampled rows.

    Three one-vs-rest boosters of ``n_estimators`` trees fit on ``real_fly_3mer`` (the default
    screening exclusions dropped), then ``predict_dataset`` on ``real_fly_fullbody_3mer_60``
    next to bare ``inplace_predict`` of the same boosters on the same rows (bare measured on
    either side of the run).
    """
    import pandas as pd

    from metadask.config import TrainConfig
    from metadask.dataset.schema import encode_labels
    from metadask.dataset.source import open_dataset
    from metadask.inference import predict_dataset
    from metadask.models.boosted import BoosterModel, booster_from_bytes, fit_binary
    from metadask.screening.rules import ANNOTATION_ARTIFACTS
    from metadask.testing import real_data_path

    train_path, scan_path = real_data_path("real_fly_3mer"), real_data_path("real_fly_fullbody_3mer_60")
    if train_path is None or scan_path is None:
        return {"status": "skipped: real_fly_3mer or real_fly_fullbody_3mer_60 not found"}
    ds = open_dataset(train_path)
    frame = pd.concat([ds.read_file(f) for f in ds.files], ignore_index=True)
    features = [c for c in ds.schema.feature_columns if c not in ANNOTATION_ARTIFACTS]
    x = frame[features].to_numpy(dtype=np.float32)
    y = encode_labels(frame[ds.label_column], ds.label_column)
    params = TrainConfig().xgb_params()
    model = BoosterModel([booster_from_bytes(fit_binary(x, (y == k).astype(np.float32), params, n_estimators).booster)
                          for k in range(3)], features)
    full = open_dataset(scan_path, require_labels=False)
    xs = np.concatenate([full.read_file_matrix(f, features)[0] for f in full.files])
    bare = [bare_rows_per_s(model.boosters, xs, workers, repeats)[0]]
    out = os.path.join(tmp, "real_out")
    predict_dataset(model, scan_path, out, overwrite=True, client=client)  # warm-up
    t = time.perf_counter()
    rows = predict_dataset(model, scan_path, out, overwrite=True, client=client)
    secs = time.perf_counter() - t
    bare.append(bare_rows_per_s(model.boosters, xs, workers, repeats)[0])
    around = sum(bare) / 2
    print(f"  real full body: {rows:,} rows, {len(features)} features: predict_dataset {rows / secs:,.0f} rows/s, "
          f"bare inplace_predict around it {around:,.0f} rows/s (x{around * secs / rows:.2f})", flush=True)
    return {"status": "ok", "rows": rows, "files": len(full.files), "features": len(features),
            "trees": sum(b.num_boosted_rounds() for b in model.boosters), "seconds": secs,
            "rows_per_s": rows / secs, "bare_inplace_rows_per_s": around, "ratio_bare_over_predict": around * secs / rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genes", type=int, default=200)
    ap.add_argument("--n-estimators", type=int, default=100,
                    help="trees per booster (fixed, no early stopping; the real fly models average ~105)")
    ap.add_argument("--fit-rows", type=int, default=20_000, help="rows each booster group is trained on (a sample)")
    ap.add_argument("--members", default="2,4,8", help="ensemble sizes K, comma-separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scan-rows", default="2500000,25000000",
                    help="scan sizes (rows, comma-separated; '' skips the scan): predict_dataset vs bare inplace_predict")
    ap.add_argument("--real", action="store_true",
                    help="also score the 60 shared real fly full bodies (a model fit on real_fly_3mer) vs bare inplace_predict")
    ap.add_argument("--tiny", action="store_true",
                    help="smoke run: 20 genes, 10 trees, K = 2, 1 repeat, scans of ~40,000 and ~400,000 rows")
    args = ap.parse_args(argv)
    if args.tiny:
        args.genes, args.n_estimators, args.members, args.repeats = 20, 10, "2", 1
        args.scan_rows = "40000,400000"
    scan_sizes = sorted(int(v) for v in args.scan_rows.split(",") if v.strip())
    ks = sorted({int(k) for k in args.members.split(",") if k.strip()})
    from distributed import Client, LocalCluster

    from metadask.inference import predict_dataset

    path = str(synthetic(args.genes, genes_per_file=max(10, args.genes // 10)))
    print(f"  training the models ({args.n_estimators} trees per booster, {max(ks)} members) ...", flush=True)
    single, members, frame, facts = build_models(path, args.n_estimators, max(ks), args.fit_rows)
    print(f"  trained in {facts['fit_seconds']:.0f} s; {facts['rows']:,} rows to score", flush=True)
    models = {"single": single}
    for k in ks:
        models[f"ensemble K={k}"] = ensemble(members[:k], single.features, single.calibrators)
    n = facts["rows"]
    load_before = os.getloadavg()
    # baseline in the same rounds: the pandas frame -> float32 feature matrix step every model does first
    local = timed({"frame to matrix": lambda: single.matrix(frame),
                   **{name: (lambda m=model: m.predict_proba(frame)) for name, model in models.items()}}, args.repeats)
    matrix_seconds = local.pop("frame to matrix")
    print(f"  in process, frame -> float32 matrix only: {n / statistics.median(matrix_seconds):,.0f} rows/s", flush=True)
    for name, secs in local.items():
        print(f"  in process, {name}: {n / statistics.median(secs):,.0f} rows/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(
        n_workers=args.workers, threads_per_worker=1, dashboard_address=":0", env={"OMP_WAIT_POLICY": "PASSIVE"}
    ) as cluster, Client(cluster) as client:
        client.wait_for_workers(args.workers)
        out = os.path.join(tmp, "pred.parquet")
        cluster_times = timed({name: (lambda m=model: predict_dataset(m, path, out, overwrite=True, client=client))
                               for name, model in models.items()}, args.repeats)
        scanned = (scan(single, frame, "splice_type", scan_sizes, client, args.workers, args.repeats, tmp)
                   if scan_sizes else None)
        real = real_scan(client, args.workers, args.n_estimators, args.repeats, tmp) if args.real else None
    for name, secs in cluster_times.items():
        print(f"  predict_dataset, {name}: {n / statistics.median(secs):,.0f} rows/s", flush=True)
    per_model: dict[str, Any] = {}
    for name, model in models.items():
        groups = model.members if hasattr(model, "members") else [model.boosters]
        trees = sum(b.num_boosted_rounds() for group in groups for b in group)
        lo, cl = statistics.median(local[name]), statistics.median(cluster_times[name])
        per_model[name] = {
            "members": len(groups), "trees": trees,
            "in_process_seconds": local[name], "in_process_rows_per_s": n / lo,
            "cluster_seconds": cluster_times[name], "cluster_rows_per_s": n / cl,
        }
    base = per_model["single"]
    for rec in per_model.values():
        rec["in_process_slowdown_vs_single"] = base["in_process_rows_per_s"] / rec["in_process_rows_per_s"]
        rec["cluster_slowdown_vs_single"] = base["cluster_rows_per_s"] / rec["cluster_rows_per_s"]
    rows = [("dataset", f"{facts['genes']} synthetic genes, {n:,} rows, {facts['features']} features "
                        f"({facts['columns_in_frame']} columns in the frame)"),
            ("trees per booster", f"{args.n_estimators} (3 boosters per member)")]
    for name, rec in per_model.items():
        rows.append((f"{name} ({rec['trees']} trees)",
                     f"in process {rec['in_process_rows_per_s']:>10,.0f} rows/s (x{rec['in_process_slowdown_vs_single']:.1f} "
                     f"time)   predict_dataset {rec['cluster_rows_per_s']:>10,.0f} rows/s "
                     f"(x{rec['cluster_slowdown_vs_single']:.1f})"))
    rows.append(("frame -> matrix only", f"in process {n / statistics.median(matrix_seconds):>10,.0f} rows/s "
                                         "(part of every predict_proba above)"))
    if scanned:
        rows.append(("scan: bare inplace_predict", f"{scanned['bare_inplace_rows_per_s']:>10,.0f} rows/s "
                                                   f"({scanned['bare_threads']} threads, matrix in memory; median)"))
        for r in scanned["runs"]:
            rows.append((f"scan: predict_dataset {r['rows']:,} rows",
                         f"{r['rows_per_s']:>10,.0f} rows/s (x{r['ratio_bare_over_predict']:.2f} "
                         f"bare's time)   client peak {r['client_peak_rss'] / 2**20:,.0f} MiB "
                         f"(+{r['client_peak_growth'] / 2**20:,.0f} MiB during the run)"))
    if real and real.get("status") == "ok":
        rows.append(("real fly full body (60 genes)", f"{real['rows_per_s']:>10,.0f} rows/s (x{real['ratio_bare_over_predict']:.2f} "
                                                     f"bare's time; {real['rows']:,} rows, {real['trees']} trees)"))
    rows.append(("load average", " ".join(f"{v:.1f}" for v in load_before) + f" on {os.cpu_count()} cores"))
    print(table(rows))
    payload = {
        "genes": args.genes, "n_estimators": args.n_estimators, "fit_rows": args.fit_rows, "members": ks,
        "repeats": args.repeats,
        "workers": args.workers, "threads_per_worker": 1, "in_process_xgboost_threads": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        **facts, "models": per_model, "frame_to_matrix_seconds": matrix_seconds,
        "frame_to_matrix_rows_per_s": n / statistics.median(matrix_seconds), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "ensemble_class": "metadask.models.ensemble.EnsembleModel",
        "scan": scanned, "real_full_body": real,
    }
    write_result("inference" + ("_tiny" if args.tiny else ""), payload)
    return payload


if __name__ == "__main__":
    main()
