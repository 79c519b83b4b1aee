"""Cheaper trees: the booster settings' CPU against out-of-fold quality, three one-vs-rest models.

Gene-grouped k-fold CV (metadask's folds and validation genes) in this process with one
thread, metadask's model for each fold (three ``binary:logistic`` boosters on one quantised
matrix, early stopping on the validation genes), once per *variant*: the default settings
(``TrainConfig``'s) with some overridden. A variant is ``NAME=key=value,key=value`` with keys
``TrainConfig`` booster options (``learning_rate``, ``max_depth``, ``subsample``,
``colsample_bytree``, ``max_bin``, ``min_child_weight``, ``early_stopping_rounds``,
``n_estimators``, ``seed``: the booster's, the folds keep the run's).

CPU is ``time.process_time`` of each variant's matrices (built per fold with its ``max_bin``)
and fits and out-of-fold prediction; variants run fold by fold, alternating, so machine load
falls on all alike. Quality is out of fold and uncalibrated: binary F1 at 0.5 and AP (splice =
donor + acceptor, probabilities normalised to sum to 1), AP per class; the deltas to the first
variant are what #17's 0.005 bound is read against.

    python -m benchmarks tree_settings [--genes 300] [--dataset PATH] [--n-estimators 100]
        [--variant NAME=k=v,...] [--tiny]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

DEFAULT_VARIANTS = (
    "default=",
    "bins64=max_bin=64",
    "depth4=max_depth=4",
    "cols05=colsample_bytree=0.5",
    "rows05=subsample=0.5",
    "lr02=learning_rate=0.2",
    "esr10=early_stopping_rounds=10",
    "lr02_esr10=learning_rate=0.2,early_stopping_rounds=10",
    "lr02_esr10_bins64=learning_rate=0.2,early_stopping_rounds=10,max_bin=64",
)
INTS = {"max_depth", "max_bin", "early_stopping_rounds", "n_estimators", "seed"}


def parse_variant(text: str) -> tuple[str, dict[str, float]]:
    name, _, spec = text.partition("=")
    over: dict[str, float] = {}
    for item in filter(None, spec.split(",")):
        k, _, v = item.partition("=")
        over[k] = int(v) if k in INTS else float(v)
    return name, over


def _quality(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, f1_score

    from metadask.dataset.schema import LABELS

    splice = p[:, 1] + p[:, 2]
    out = {"binary_f1": float(f1_score(y != 0, splice >= 0.5)), "binary_ap": float(average_precision_score(y != 0, splice))}
    for k, c in enumerate(LABELS):
        out[f"ap_{c}"] = float(average_precision_score(y == k, p[:, k]))
    return out


def run(path: str, variants: list[str], n_estimators: int, n_folds: int, seed: int = 42) -> dict[str, Any]:
    import xgboost as xgb

    from metadask.config import TrainConfig
    from metadask.dataset.index import build_gene_index
    from metadask.dataset.rows import gene_set, read_rows
    from metadask.dataset.source import open_dataset
    from metadask.plan import assign_folds, plan_folds
    from metadask.screening.rules import ANNOTATION_ARTIFACTS

    ds = open_dataset(path)
    index = build_gene_index(ds)
    # the default exclusions and the synthetic data's label copies (screening excludes them as leaks)
    feats = [f for f in ds.schema.feature_columns if f not in ANNOTATION_ARTIFACTS and not f.startswith("is_annotated")]
    x, y, meta = read_rows(ds, gene_set(index, index.genes), feats)
    genes = meta[ds.gene_column].astype(str).to_numpy()
    plans = plan_folds(index, assign_folds(index, n_folds, seed), valid_size=0.1, seed=seed)
    specs = [parse_variant(v) for v in variants]
    settings = {}
    for name, over in specs:
        cfg = TrainConfig.from_options(**({"seed": seed, "n_estimators": n_estimators} | over))
        params = {k: v for k, v in cfg.xgb_params().items() if k != "device"}
        settings[name] = (params | {"nthread": 1}, cfg.n_estimators, cfg.early_stopping_rounds)
    cpu = dict.fromkeys(settings, 0.0)
    trees = dict.fromkeys(settings, 0)
    oof = {name: np.zeros((len(y), 3)) for name in settings}
    for i, fp in enumerate(plans):
        fit, valid, test = (np.isin(genes, list(g)) for g in (fp.fit, fp.valid, fp.test))
        xf, xv, xt = (np.ascontiguousarray(x[m]) for m in (fit, valid, test))
        for name, (params, rounds, esr) in settings.items():
            t0 = time.process_time()
            dtrain = xgb.QuantileDMatrix(xf, max_bin=params["max_bin"], nthread=1)
            dvalid = xgb.QuantileDMatrix(xv, ref=dtrain, max_bin=params["max_bin"], nthread=1)
            margins = np.empty((len(xt), 3))
            for k in range(3):
                dtrain.set_label((y[fit] == k).astype(np.float32))
                dvalid.set_label((y[valid] == k).astype(np.float32))
                b = xgb.train(params, dtrain, rounds, evals=[(dvalid, "valid")],
                              early_stopping_rounds=esr or None, verbose_eval=False)
                if esr:
                    b = b[: b.best_iteration + 1]
                trees[name] += b.num_boosted_rounds()
                margins[:, k] = b.inplace_predict(xt, predict_type="margin")
            cpu[name] += time.process_time() - t0
            p = 1 / (1 + np.exp(-margins))
            oof[name][test] = p / p.sum(axis=1, keepdims=True)
        print(f"fold {i + 1}/{len(plans)}: " + ", ".join(f"{n} {cpu[n]:.1f}" for n in settings), flush=True)
    out: dict[str, Any] = {"rows": int(len(y)), "genes": index.n_genes, "features": len(feats), "variants": {}}
    first = None
    for name, over in specs:
        q = {k: round(v, 4) for k, v in _quality(y, oof[name]).items()}
        first = first or (name, q)
        out["variants"][name] = {"settings": over, "cpu_seconds": round(cpu[name], 2), "trees": trees[name],
                                 "cpu_ratio": round(cpu[name] / cpu[first[0]], 3), "quality": q,
                                 "quality_delta": {k: round(v - first[1][k], 4) for k, v in q.items()}}
    return out


def main(argv: list[str] | None = None) -> dict:
    from benchmarks.common import synthetic, table, write_result

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genes", type=int, default=300)
    ap.add_argument("--dataset", default=None)
    ap.add_argument("--n-estimators", type=int, default=100)
    ap.add_argument("--n-folds", type=int, default=5)
    ap.add_argument("--variant", action="append", default=None, help="NAME=key=value,...; the first is the reference")
    ap.add_argument("--name", default=None, help="result file name (default from the data)")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)
    variants = args.variant or list(DEFAULT_VARIANTS)
    if args.tiny:
        args.genes, args.n_estimators, args.n_folds = 30, 10, 2
        variants = variants[:3]
    path = args.dataset or str(synthetic(args.genes, genes_per_file=max(10, args.genes // 10)))
    res = run(path, variants, args.n_estimators, args.n_folds)
    rows = [("data", f"{path}: {res['genes']} genes, {res['rows']:,} rows, {res['features']} features")]
    for name, r in res["variants"].items():
        worst = min(r["quality_delta"].values())
        rows.append((name, f"{r['cpu_seconds']:.1f} CPU-s ({r['cpu_ratio']:.2f}x), {r['trees']} trees, worst delta "
                     f"{worst:+.4f}; " + ", ".join(f"{k} {q:.4f}" for k, q in r["quality"].items())))
    print(table(rows))
    name = args.name or ("tree_settings_tiny" if args.tiny else
                         f"tree_settings_{'real' if args.dataset else str(args.genes) + 'genes'}")
    write_result(name, {"dataset": path, "n_estimators": args.n_estimators, "n_folds": args.n_folds, **res})
    return res


if __name__ == "__main__":
    main()
