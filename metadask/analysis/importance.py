"""Feature importance by three methods, per class, in one table.

* XGBoost's gain / weight / cover (``model.importance()``; for ensembles as the model reports
  them), summed over the model's trees.
* mean |SHAP| on the representative sample (see :mod:`metadask.analysis.shap`).
* Permutation importance: the drop in average precision (one-vs-rest, per class) when one
  feature's column is shuffled, on the sample, for the top features only (bounded cost), in
  worker tasks. The final model was trained on every gene, so the sample is **in-sample**:
  the column says so (``perm_ap_drop_insample``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metadask.cluster.watch import gather
from metadask.dataset.schema import LABELS
from metadask.io import write_csv
from metadask.models.threads import limit_threads

log = logging.getLogger("metadask")

PERMUTATION_TOP = 10
"""Features per class whose permutation importance is measured (union over classes)."""
PERMUTATION_REPEATS = 3
PERMUTATION_ROWS = 5_000
"""At most this many sample rows are used for permutation importance."""


def model_importance(model: Any) -> pd.DataFrame | None:
    """gain / weight / cover per class and feature, or None when the model cannot say."""
    try:
        imp = model.importance()
    except NotImplementedError:
        return None
    return imp[["cls", "feature", "gain", "weight", "cover"]].copy()


def _ap(truth: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(truth, score)) if truth.any() and not truth.all() else float("nan")


def permutation_task(parts: Sequence[dict[str, np.ndarray]], model: Any, columns: Sequence[int], n_repeats: int,
                     seed: int) -> list[dict[str, Any]]:
    """On a worker: AP drop per class for each of ``columns`` (shuffled ``n_repeats`` times)."""
    x = np.concatenate([p["x"] for p in parts]).astype(np.float32, copy=True)
    y = np.concatenate([p["y"] for p in parts])
    margin = np.concatenate([p["margin"] for p in parts])
    base = [_ap(y == k, margin[:, k]) for k in range(len(LABELS))]
    out = []
    with limit_threads():
        for j in columns:
            original = x[:, j].copy()
            drops = np.empty((n_repeats, len(LABELS)))
            for r in range(n_repeats):
                x[:, j] = original[np.random.default_rng([seed, int(j), r]).permutation(len(original))]
                m = model.predict_margin(x)
                drops[r] = [base[k] - _ap(y == k, m[:, k]) for k in range(len(LABELS))]
            x[:, j] = original
            for k, cls in enumerate(LABELS):
                out.append({"feature_index": int(j), "cls": cls, "baseline_ap": base[k],
                            "perm_ap_drop_insample": float(drops[:, k].mean()),
                            "perm_ap_drop_std": float(drops[:, k].std(ddof=0)), "rows": int(len(y))})
    return out


def permutation_importance(client: Any, sample: Any, columns: Sequence[int], *, n_tasks: int, seed: int,
                           n_repeats: int = PERMUTATION_REPEATS, max_rows: int = PERMUTATION_ROWS) -> pd.DataFrame:
    """Permutation importance of ``columns`` over the sample's partitions, split into ``n_tasks`` tasks."""
    columns = list(columns)
    if not columns or not sample.parts:
        return pd.DataFrame(columns=["feature", "cls", "baseline_ap", "perm_ap_drop_insample", "perm_ap_drop_std", "rows"])
    from metadask.analysis.shap import part_rows

    # a light, subsampled copy of each partition (made where it lives): tasks move x only, never SHAP values
    fraction = min(1.0, max_rows / max(sample.plan.n_rows, 1))
    light = [client.submit(part_rows, p, fraction, seed, pure=False) for p in sample.parts]
    chunks = [c.tolist() for c in np.array_split(np.asarray(columns), max(1, min(n_tasks, len(columns)))) if len(c)]
    futures = [client.submit(permutation_task, light, sample.model, chunk, n_repeats, seed, pure=False) for chunk in chunks]
    rows = [r for part in gather(client, futures, "the permutation-importance tasks") for r in part]
    df = pd.DataFrame(rows)
    df.insert(0, "feature", [sample.features[j] for j in df.pop("feature_index")])
    return df


def permutation_columns(features: Sequence[str], ranking: pd.DataFrame, score: str, top: int = PERMUTATION_TOP) -> list[int]:
    """Union over classes of the ``top`` features by ``score`` (a column of ``ranking``)."""
    pos = {f: j for j, f in enumerate(features)}
    chosen: set[int] = set()
    for cls in LABELS:
        t = ranking[ranking["cls"] == cls].sort_values(score, ascending=False, kind="stable").head(top)
        chosen |= {pos[f] for f in t["feature"] if f in pos}
    return sorted(chosen)


def _rank(values: pd.Series) -> pd.Series:
    return values.rank(ascending=False, method="min").astype("Int64")


def combined_table(features: Sequence[str], gain: pd.DataFrame | None, shap: pd.DataFrame | None,
                   perm: pd.DataFrame | None) -> pd.DataFrame:
    """One row per class and feature with every method that ran (a method that did not run has
    no columns; a feature a method did not evaluate has an empty cell)."""
    base = pd.DataFrame([(cls, f) for cls in LABELS for f in features], columns=["cls", "feature"])
    if gain is not None:
        base = base.merge(gain, on=["cls", "feature"], how="left")
        base["gain_rank"] = base.groupby("cls")["gain"].transform(_rank)
    if shap is not None:
        base = base.merge(shap[["cls", "feature", "mean_abs_shap", "mean_shap", "shap_rank"]], on=["cls", "feature"], how="left")
    if perm is not None and len(perm):
        base = base.merge(perm[["cls", "feature", "perm_ap_drop_insample", "perm_ap_drop_std"]], on=["cls", "feature"], how="left")
        base["perm_rank"] = base.groupby("cls")["perm_ap_drop_insample"].transform(_rank)
    key = "shap_rank" if shap is not None else "gain_rank" if gain is not None else None
    order = [base["cls"].map({c: i for i, c in enumerate(LABELS)})]
    base = base.assign(_cls=order[0])
    base = base.sort_values(["_cls", key] if key else ["_cls", "feature"], kind="stable").drop(columns="_cls")
    return base.reset_index(drop=True)


def plot_methods(table: pd.DataFrame) -> dict[str, str]:
    methods = {}
    for col, label in (("mean_abs_shap", "mean |SHAP|"), ("gain", "gain"), ("perm_ap_drop_insample", "permutation AP drop (in-sample)")):
        if col in table:
            methods[col] = label
    return methods


def write_importance(out_dir: Path, table: pd.DataFrame, *, plots: bool) -> list[Path]:
    d = out_dir / "feature_importance_analysis"
    paths = [write_csv(d / "feature_importance_combined.csv", table, float_format="%.6g")]
    methods = plot_methods(table)
    if plots and methods:
        from metadask.analysis import plots as P

        paths += P.save_figure(P.importance_figure(table, methods), d / "feature_importance_comparison", ("png",))
    return paths
