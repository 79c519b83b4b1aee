"""Full bodies: every gene-body position scored out of fold, the way users run a meta-model.

Workflows (rows), each evaluated on **every position** of the evaluation genes, out of fold
(a training gene is scored by the CV fold model that never saw it):

* ``base``: the base model (SpliceAI on real data) on the same positions;
* ``sampled``: trained on the upstream sample (``real_fly_3mer``: every site, hard negatives
  >= 0.15, a few near / random ones; no weights), ``--eval-dataset`` the full bodies;
* ``weighted``: trained on ``real_fly_3mer_weighted`` (every negative >= 0.01 kept, inclusion
  weights), ``--eval-dataset`` the full bodies;
* ``library``: trained from the full bodies themselves with the library's own sampling;
* ``mining``: the same with ``--hard-negative-rounds 1``.

On synthetic data (``make-dataset --full-body``) the rows are base, library and mining.
Columns: binary F1 at 0.5, at the stored threshold (cross-fitted over folds) and at the best
threshold; AP donor / acceptor; global top-k per class; false positives per 10 kb; wall time;
peak memory of the client and the workers; and prediction rows/s of ``predict_dataset`` next to
bare XGBoost ``inplace_predict`` on the same boosters and rows in the same run.

    python -m benchmarks full_body [--n-estimators 300] [--synthetic-genes 150] [--workflows ...]
        [--option KEY=VALUE ...] [--name NAME] [--tiny]

``--option`` passes a training option to every workflow (``--option learning_rate=0.2``), to
compare settings on the distribution users run the model on; ``--name`` names the result file.

Real data come from ``../shared/data`` (``METADASK_REAL_DATA``); without them the real rows
are recorded as skipped. ``--tiny`` (the smoke test) uses 24 synthetic genes and 10 trees.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import CACHE, write_result
from benchmarks.real_data import train_measured

KEYS = ("f1_at_0.5", "f1_at_threshold", "best_f1", "ap_donor", "ap_acceptor", "topk_donor", "topk_acceptor",
        "fp_per_10kb", "threshold")
TARGETS = {"f1_at_threshold": 0.78, "ap_donor": 0.85, "ap_acceptor": 0.85, "topk_donor": 0.78, "topk_acceptor": 0.78}


def _metrics(run_dir: Path) -> dict[str, Any]:
    import json

    return json.loads((run_dir / "full_body_evaluation" / "metrics.json").read_text())


def _row(metrics: dict[str, Any], model: str) -> dict[str, Any]:
    return {k: metrics[model].get(k) for k in KEYS}


def _synthetic_full_body(n_genes: int, gene_length: int, seed: int = 5) -> Path:
    from metadask.dataset.synthetic import make_dataset

    out = CACHE / f"fullbody_{n_genes}_{gene_length}_{seed}"
    if not (out / "master" / "gene_manifest.csv").exists():
        make_dataset(out, n_genes, seed=seed, full_body=True, gene_length=gene_length, genes_per_file=25,
                     overwrite=True)
    return out


def prediction_speed(model_dir: Path, dataset: Path, workers: int) -> dict[str, Any]:
    """``predict_dataset`` rows/s on a fresh cluster vs bare ``inplace_predict`` of the same boosters and rows."""
    import numpy as np
    from distributed import Client, LocalCluster

    from metadask.dataset.source import open_dataset
    from metadask.inference import predict_dataset
    from metadask.models.bundle import load_model

    model = load_model(model_dir)
    ds = open_dataset(dataset)
    present = [f for f in model.features if f in ds.schema.columns]
    frames = [ds.read_file(f, present) for f in ds.files]
    x = np.zeros((sum(len(f) for f in frames), len(model.features)), dtype=np.float32)
    start = 0
    cols = [model.features.index(f) for f in present]
    for f in frames:
        x[start:start + len(f), cols] = f.to_numpy(np.float32)
        start += len(f)
    del frames
    boosters = getattr(model, "boosters", None) or [b for m in model.members for b in m]
    for b in boosters:
        b.set_param({"nthread": workers})
    t0 = time.perf_counter()
    for b in boosters:
        b.inplace_predict(x, predict_type="margin")
    bare = time.perf_counter() - t0
    with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0",
                      env={"OMP_WAIT_POLICY": "PASSIVE"}) as cluster, Client(cluster) as client, \
            tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        n = predict_dataset(model_dir, dataset, Path(tmp) / "pred", client=client)
        full = time.perf_counter() - t0
    return {"rows": int(n), "bare_inplace_predict_seconds": bare, "predict_dataset_seconds": full,
            "bare_rows_per_second": len(x) / bare, "predict_rows_per_second": n / full, "ratio": full / bare,
            "note": "predict_dataset includes reading parquet, probabilities, calls and writing parquet parts; "
                    f"bare is inplace_predict of the same {len(boosters)} boosters on the rows already in memory "
                    f"({workers} threads)"}


def _option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key, value as int, float or text)."""
    key, _, value = text.partition("=")
    for kind in (int, float):
        try:
            return key.strip().replace("-", "_"), kind(value)
        except ValueError:
            pass
    return key.strip().replace("-", "_"), value


def run_workflow(name: str, train_path: Path, out: Path, opts: dict[str, Any], workers: int) -> dict[str, Any]:
    print(f"  {name}: training on {train_path} ...", flush=True)
    rec = train_measured(str(train_path), str(out), opts.pop("strategy", "single"), opts, workers=workers)
    metrics = _metrics(out)
    row = {"workflow": name, **_row(metrics, "meta"), "wall_seconds": rec["wall_seconds"],
           "client_peak_rss": rec["client_peak_rss"], "worker_peak_rss": rec["worker_peak_rss"],
           "positions": metrics["meta"]["positions"], "genes": metrics["meta"]["genes"],
           "source": metrics["source"]}
    print("   ", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k in KEYS}, flush=True)
    return {"row": row, "base": {"workflow": "base", **_row(metrics, "base")}, "dir": out}


def run_plan(tag: str, plan: list[tuple[str, Path | None, dict[str, Any]]], wanted: set[str], eval_path: Path,
             speed_of: str, common: dict[str, Any], tmp: Path, workers: int) -> dict[str, Any]:
    """Run the wanted workflows of ``plan``; rows (the base model's first) and the prediction speed of ``speed_of``."""
    out: dict[str, Any] = {}
    rows, base = [], None
    for name, path, extra in plan:
        if name not in wanted or path is None:
            continue
        r = run_workflow(name, path, tmp / f"{tag}_{name}", {**common, **extra}, workers)
        rows.append(r["row"])
        base = base or r["base"]
        if name == speed_of:
            out["prediction"] = prediction_speed(r["dir"] / "model", eval_path, workers)
    out["rows"] = ([base] if base else []) + rows
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks full_body", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-estimators", type=int, default=300)
    ap.add_argument("--synthetic-genes", type=int, default=150)
    ap.add_argument("--gene-length", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workflows", default="sampled,weighted,library,mining")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="a training option for every workflow (repeatable), e.g. learning_rate=0.2")
    ap.add_argument("--name", default=None, help="result file name (default full_body)")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)
    from metadask.testing import real_data_path

    if args.tiny:
        args.n_estimators, args.synthetic_genes, args.gene_length = 10, 24, 1200
    wanted = set(args.workflows.split(","))
    common = {"n_estimators": args.n_estimators, "skip_shap": True, **dict(_option(o) for o in args.option)}
    results: dict[str, Any] = {"options": vars(args), "targets": TARGETS, "real": {}, "synthetic": {}}
    fb = None if args.tiny else real_data_path("real_fly_fullbody_3mer_60")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if fb is None:
            results["real"] = {"skipped": "tiny run" if args.tiny else "../shared/data/real_fly_fullbody_3mer_60 not found"}
        else:
            plan = [("sampled", real_data_path("real_fly_3mer"), {"eval_dataset": str(fb)}),
                    ("weighted", real_data_path("real_fly_3mer_weighted"), {"eval_dataset": str(fb)}),
                    ("library", fb, {}), ("mining", fb, {"hard_negative_rounds": 1})]
            results["real"].update(run_plan("real", plan, wanted, fb, "weighted", common, tmp, args.workers))
            results["real"]["eval"] = str(fb)
        syn = _synthetic_full_body(args.synthetic_genes, args.gene_length)
        plan = [("library", syn, {}), ("mining", syn, {"hard_negative_rounds": 1})]
        results["synthetic"].update(run_plan("syn", plan, wanted, syn, "library", common, tmp, args.workers))
        results["synthetic"]["dataset"] = {"genes": args.synthetic_genes, "gene_length": args.gene_length}
    results["load_average"] = os.getloadavg()
    for part in ("real", "synthetic"):
        for row in results[part].get("rows", []):
            print(f"{part:9s} {row['workflow']:9s} " + " ".join(
                f"{k}={row[k]:.3f}" for k in KEYS if isinstance(row.get(k), (int, float))))
        if "prediction" in results[part]:
            p = results[part]["prediction"]
            print(f"{part:9s} prediction: {p['predict_rows_per_second']:,.0f} rows/s vs bare {p['bare_rows_per_second']:,.0f} "
                  f"(predict_dataset / bare time: {p['ratio']:.2f})")
    write_result(args.name or ("full_body_tiny" if args.tiny else "full_body"), results)


if __name__ == "__main__":
    main()
