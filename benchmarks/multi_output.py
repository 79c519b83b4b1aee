"""One multi-class model with vector-leaf trees vs three one-vs-rest models: CPU and quality.

Gene-grouped k-fold CV (metadask's folds and validation genes) in this process with one
thread; for each fold, on the same quantised matrix:

* ``ovr``: three ``binary:logistic`` boosters (metadask's model), early stopping on the
  validation genes;
* ``multi_output_tree``: one ``multi:softprob`` booster with ``multi_strategy=
  "multi_output_tree"`` (one tree per round, a vector of 3 leaf values);
* ``one_output_per_tree``: one ``multi:softprob`` booster with XGBoost's default strategy
  (3 trees per round) for reference;
* ``ovr_splice_only``: the donor and acceptor boosters of ``ovr`` alone (a third fewer fits),
  the neither probability derived as (1 - p_donor)(1 - p_acceptor): does the neither model
  earn its CPU?

Features: the dataset's, less the default exclusions and ``is_annotated*`` label copies.
CPU is ``time.process_time`` of the fits (matrix building counted once per fold, outside).
Quality is out of fold and uncalibrated: binary F1 at 0.5 and AP (splice = donor + acceptor,
one-vs-rest probabilities normalised to sum to 1), AP per class.

    python -m benchmarks multi_output [--genes 300] [--dataset PATH] [--n-estimators 100] [--tiny]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

VARIANTS = ("ovr", "multi_output_tree", "one_output_per_tree")
TWO_MODELS = "ovr_splice_only"
"""Two of the three one-vs-rest boosters (donor, acceptor; neither derived as (1 - p_donor)(1 - p_acceptor)):
the same trees as ``ovr`` less the neither model's, scored without it; its CPU is ``ovr``'s less the neither fits."""


def _quality(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, f1_score

    from metadask.dataset.schema import LABELS

    splice = p[:, 1] + p[:, 2]
    out = {"binary_f1": float(f1_score(y != 0, splice >= 0.5)), "binary_ap": float(average_precision_score(y != 0, splice))}
    for k, c in enumerate(LABELS):
        out[f"ap_{c}"] = float(average_precision_score(y == k, p[:, k]))
    return out


def run(path: str, n_estimators: int, n_folds: int, seed: int = 42, esr: int = 30) -> dict[str, Any]:
    import xgboost as xgb

    from metadask.config import TrainConfig
    from metadask.dataset.index import build_gene_index
    from metadask.dataset.rows import gene_set, read_rows
    from metadask.dataset.source import open_dataset
    from metadask.plan import assign_folds, plan_folds

    ds = open_dataset(path)
    index = build_gene_index(ds)
    from metadask.screening.rules import ANNOTATION_ARTIFACTS

    # the default exclusions and the synthetic data's label copies (screening excludes them as leaks)
    feats = [f for f in ds.schema.feature_columns if f not in ANNOTATION_ARTIFACTS and not f.startswith("is_annotated")]
    x, y, meta = read_rows(ds, gene_set(index, index.genes), feats)
    genes = meta[ds.gene_column].astype(str).to_numpy()
    folds = assign_folds(index, n_folds, seed)
    plans = plan_folds(index, folds, valid_size=0.1, seed=seed)
    base = {k: v for k, v in TrainConfig(seed=seed).xgb_params().items() if k not in ("objective", "eval_metric")}
    base["nthread"] = 1
    cpu = {v: 0.0 for v in (*VARIANTS, TWO_MODELS)}
    trees = {v: 0 for v in (*VARIANTS, TWO_MODELS)}
    oof = {v: np.zeros((len(y), 3)) for v in (*VARIANTS, TWO_MODELS)}
    for fp in plans:
        fit, valid, test = (np.isin(genes, list(g)) for g in (fp.fit, fp.valid, fp.test))
        dtrain = xgb.QuantileDMatrix(x[fit], max_bin=base["max_bin"], nthread=1)
        dvalid = xgb.QuantileDMatrix(x[valid], ref=dtrain, max_bin=base["max_bin"], nthread=1)
        xt = np.ascontiguousarray(x[test])
        for v in VARIANTS:
            t0 = time.process_time()
            if v == "ovr":
                margins = np.empty((len(xt), 3))
                for k in range(3):
                    t_class = time.process_time()
                    dtrain.set_label((y[fit] == k).astype(np.float32))
                    dvalid.set_label((y[valid] == k).astype(np.float32))
                    b = xgb.train({**base, "objective": "binary:logistic", "eval_metric": "logloss"}, dtrain,
                                  n_estimators, evals=[(dvalid, "valid")], early_stopping_rounds=esr, verbose_eval=False)
                    b = b[: b.best_iteration + 1]
                    trees[v] += b.num_boosted_rounds()
                    margins[:, k] = b.inplace_predict(xt, predict_type="margin")
                    if k:
                        cpu[TWO_MODELS] += time.process_time() - t_class
                        trees[TWO_MODELS] += b.num_boosted_rounds()
                p = 1 / (1 + np.exp(-margins))
                two = np.column_stack([(1 - p[:, 1]) * (1 - p[:, 2]), p[:, 1], p[:, 2]])
                oof[TWO_MODELS][test] = two / two.sum(axis=1, keepdims=True)
                p /= p.sum(axis=1, keepdims=True)
            else:
                dtrain.set_label(y[fit].astype(np.float32))
                dvalid.set_label(y[valid].astype(np.float32))
                params = {**base, "objective": "multi:softprob", "num_class": 3, "eval_metric": "mlogloss",
                          "multi_strategy": v}
                b = xgb.train(params, dtrain, n_estimators, evals=[(dvalid, "valid")], early_stopping_rounds=esr,
                              verbose_eval=False)
                b = b[: b.best_iteration + 1]
                trees[v] += b.num_boosted_rounds() * (1 if v == "multi_output_tree" else 3)
                p = b.inplace_predict(xt)
            cpu[v] += time.process_time() - t0
            oof[v][test] = p
    return {v: {"cpu_seconds": round(cpu[v], 2), "trees": trees[v], "quality": {k: round(q, 4) for k, q in
                                                                                _quality(y, oof[v]).items()}}
            for v in (*VARIANTS, TWO_MODELS)} | {"rows": int(len(y)), "genes": index.n_genes, "features": len(feats)}


def main(argv: list[str] | None = None) -> dict:
    from benchmarks.common import synthetic, table, write_result

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genes", type=int, default=300)
    ap.add_argument("--dataset", default=None)
    ap.add_argument("--n-estimators", type=int, default=100)
    ap.add_argument("--n-folds", type=int, default=5)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)
    if args.tiny:
        args.genes, args.n_estimators, args.n_folds = 30, 10, 2
    path = args.dataset or str(synthetic(args.genes, genes_per_file=max(10, args.genes // 10)))
    res = run(path, args.n_estimators, args.n_folds)
    rows = [("data", f"{path}: {res['genes']} genes, {res['rows']:,} rows, {res['features']} features")]
    for v in (*VARIANTS, TWO_MODELS):
        r = res[v]
        rows.append((v, f"{r['cpu_seconds']:.1f} CPU-s, {r['trees']} trees, " +
                     ", ".join(f"{k} {q:.4f}" for k, q in r["quality"].items())))
    print(table(rows))
    name = "multi_output_tiny" if args.tiny else f"multi_output_{'real' if args.dataset else str(args.genes) + 'genes'}"
    write_result(name, {"dataset": path, "n_estimators": args.n_estimators, "n_folds": args.n_folds, **res})
    return res


if __name__ == "__main__":
    main()
