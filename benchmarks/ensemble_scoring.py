"""Leave-batch-out scoring vs bare ``inplace_predict`` of the same members on the same rows.

The batch ensemble scores each batch's genes out of fold with the members that never saw
them (up to ``metadask.ensemble-cv-members``): one task per batch reads the batch's rows once
and runs every scoring member over them (:func:`~metadask.strategies.batch_ensemble.run_ensemble_predict`).
This case fits the members of a synthetic dataset in this process, then times, side by side
and batch by batch on one thread:

* ``scoring``: ``run_ensemble_predict`` as a worker runs it (read, weights, member boosters
  from the worker's cache, weighted margins, prediction frame), starting with a cold cache;
* ``bare``: ``inplace_predict`` of the same members' boosters (already loaded) on the same
  float32 rows (already in memory): the arithmetic alone;
* ``reload``: the previous implementation's cost (every task loading every member's boosters again).

Target: ``scoring`` within 2x of ``bare``. The margins of ``scoring`` and ``bare`` must agree.

    python -m benchmarks ensemble_scoring [--genes 200] [--genes-per-batch 25] [--kmers 3]
                                          [--n-estimators 100] [--members 10] [--tiny]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from benchmarks.common import synthetic, table, write_result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genes", type=int, default=200)
    ap.add_argument("--genes-per-batch", type=int, default=25)
    ap.add_argument("--kmers", default="3")
    ap.add_argument("--n-estimators", type=int, default=100)
    ap.add_argument("--members", type=int, default=10, help="most members scoring a gene (ensemble-cv-members)")
    ap.add_argument("--tiny", action="store_true", help="smoke run: 40 genes, 10 per batch, 5 trees")
    args = ap.parse_args(argv)
    if args.tiny:
        args.genes, args.genes_per_batch, args.n_estimators = 40, 10, 5
    import xgboost as xgb

    from metadask.config import TrainConfig
    from metadask.dataset import build_gene_index, open_dataset
    from metadask.dataset.schema import LABELS
    from metadask.models.boosted import booster_from_bytes
    from metadask.models.ensemble import combine_margins, fit_weights, member_margins
    from metadask.plan import split_validation
    from metadask.strategies import batch_ensemble as be
    from metadask.strategies.tasks import FitSpec, read_rows, run_fits
    from metadask.strategies.tasks import gene_set as index_gene_set

    kmers = tuple(int(k) for k in args.kmers.split("+"))
    path = synthetic(args.genes, kmers, genes_per_file=50)
    ds = open_dataset(str(path))
    index = build_gene_index(ds)
    features = list(ds.schema.feature_columns)
    cfg = TrainConfig(n_estimators=args.n_estimators, seed=1)
    batches = be.pack_batches(index.table["n_rows"], args.genes_per_batch, cfg.seed)
    n_batches = int(batches.max()) + 1
    def gene_set(genes):
        return index_gene_set(index, genes)

    t0 = time.perf_counter()
    fits = []
    for b in range(n_batches):
        genes = sorted(batches.index[batches == b])
        fit, valid = split_validation(index, genes, cfg.valid_size, cfg.seed + b)
        specs = [FitSpec(key=f"b{b}-{name}", scope="member", cls=k, batch=b, fit=gene_set(fit), valid=gene_set(valid),
                         eval_genes=(), n_estimators=args.n_estimators, early_stopping_rounds=0, params=cfg.xgb_params())
                 for k, name in enumerate(LABELS)]
        fits.append(run_fits(ds, features, specs))
    fit_seconds = time.perf_counter() - t0
    print(f"  {n_batches} members of {args.n_estimators} trees x 3 classes fitted in {fit_seconds:.1f} s", flush=True)

    seconds = {"scoring": 0.0, "bare": 0.0, "reload": 0.0, "read": 0.0}
    rows = scored = 0
    worst = 0.0
    be._booster_cache.clear()  # a cold worker
    for b in range(n_batches):
        others = be.scoring_members(b, n_batches, args.members, cfg.seed)
        gs = gene_set(sorted(batches.index[batches == b]))
        member_fits = [fits[j] for j in others]
        t = time.perf_counter()
        frame = be.run_ensemble_predict(ds, features, gs, member_fits, "weighted")
        seconds["scoring"] += time.perf_counter() - t

        t = time.perf_counter()
        x, _, _ = read_rows(ds, gs, features)
        read = time.perf_counter() - t
        seconds["read"] += read
        boosters = [[booster_from_bytes(f.booster) for f in m] for m in member_fits]
        t = time.perf_counter()
        with xgb.config_context(nthread=1):
            mm = member_margins(boosters, x)
        seconds["bare"] += time.perf_counter() - t
        t = time.perf_counter()  # the previous implementation: every task loads every member's boosters
        with xgb.config_context(nthread=1):
            for m in member_fits:
                member_margins([[booster_from_bytes(f.booster) for f in m]], x)
        seconds["reload"] += time.perf_counter() - t + read
        bare_margins = combine_margins(mm, fit_weights(member_fits, "weighted")).astype(np.float32)  # the frame holds float32
        got = frame[[f"margin_{c}" for c in LABELS]].to_numpy()
        worst = max(worst, float(np.max(np.abs(got - bare_margins))))
        rows += len(x)
        scored += len(x) * len(others)
    ratio = seconds["scoring"] / seconds["bare"]
    reload_ratio = seconds["reload"] / seconds["bare"]
    print(table([
        ("members / batches", f"{n_batches} ({args.genes_per_batch} genes each), <= {args.members} score a gene"),
        ("rows scored", f"{rows:,} rows, {scored:,} row x member predictions"),
        ("bare inplace_predict", f"{seconds['bare']:.2f} s"),
        ("leave-batch-out scoring", f"{seconds['scoring']:.2f} s ({ratio:.2f}x bare; target <= 2x)"),
        ("  of which reading rows", f"{seconds['read']:.2f} s"),
        ("reloading boosters per task (before)", f"~{seconds['reload']:.2f} s ({reload_ratio:.2f}x bare)"),
        ("max |margin difference|", f"{worst:.2e}"),
    ]))
    payload = {
        "genes": args.genes, "genes_per_batch": args.genes_per_batch, "kmers": args.kmers, "features": len(features),
        "n_estimators": args.n_estimators, "members": args.members, "n_batches": n_batches, "rows": rows,
        "member_predictions": scored, "seconds": seconds, "ratio": ratio, "reload_ratio": reload_ratio,
        "within_target": ratio <= 2.0, "max_abs_margin_difference": worst, "fit_seconds": fit_seconds,
    }
    write_result("ensemble_scoring" + ("_tiny" if args.tiny else ""), payload)
    return payload


if __name__ == "__main__":
    main()
