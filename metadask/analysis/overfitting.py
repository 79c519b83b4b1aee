"""Overfitting analysis from the per-round loss histories every fit records.

For each fit with a history (``result.histories``: logloss per round on a small held-in sample,
``train``, and on held-out validation genes, ``valid``): the best iteration (lowest validation
loss), train and validation loss there, the gap between them, how much validation loss rose
after the best round, and a recommended ``n_estimators``: the mean over CV fits of
(best iteration + 1) times 1.1, rounded up.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metadask.dataset.schema import LABELS
from metadask.io import write_csv, write_json
from metadask.results import TrainingResult

HEADROOM = 1.1
"""Recommended n_estimators = ceil(mean(best iteration + 1) * HEADROOM)."""


def _class_of(key: str, fits: pd.DataFrame) -> tuple[str | None, dict[str, Any]]:
    if "key" in fits and (fits["key"] == key).any():
        row = fits[fits["key"] == key].iloc[0]
        info = {c: row[c] for c in ("scope", "fold", "batch") if c in row}
        return str(row["cls"]), info
    for cls in LABELS:  # strategies that record histories under other keys: class name in the key
        if cls in key.split("-"):
            return cls, {}
    return None, {}


def loss_curves(result: TrainingResult) -> pd.DataFrame:
    """Long frame: key, cls, scope, fold, batch, round, train, valid (NaN where not recorded)."""
    frames = []
    for key, h in sorted(result.histories.items()):
        cls, info = _class_of(key, result.fits)
        n = max(len(h.get("train", [])), len(h.get("valid", [])))
        if n == 0:
            continue
        df = pd.DataFrame({"round": np.arange(n)})
        for name in ("train", "valid"):
            v = np.full(n, np.nan)
            vals = np.asarray(h.get(name, []), dtype=np.float64)
            v[: len(vals)] = vals
            df[name] = v
        df.insert(0, "key", key)
        df.insert(1, "cls", cls)
        for c in ("scope", "fold", "batch"):
            val = info.get(c)
            df[c] = None if val is None or (isinstance(val, float) and math.isnan(val)) else val
        frames.append(df)
    cols = ["key", "cls", "round", "train", "valid", "scope", "fold", "batch"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def per_fit(curves: pd.DataFrame, n_estimators: int | None) -> pd.DataFrame:
    """One row per fit: best iteration, losses and gap at it, rise of validation loss after it."""
    rows = []
    for key, c in curves.groupby("key", sort=True):
        c = c.sort_values("round")
        valid, train = c["valid"].to_numpy(), c["train"].to_numpy()
        has_valid = np.isfinite(valid).any()
        best = int(np.nanargmin(valid)) if has_valid else int(len(c) - 1)
        at = lambda a, i: float(a[i]) if np.isfinite(a[i]) else float("nan")  # noqa: E731
        rows.append({
            "key": key, "cls": c["cls"].iloc[0], "scope": c["scope"].iloc[0], "fold": c["fold"].iloc[0],
            "batch": c["batch"].iloc[0], "rounds": int(len(c)), "best_iteration": best,
            "train_loss_at_best": at(train, best), "valid_loss_at_best": at(valid, best),
            "gap_at_best": at(valid, best) - at(train, best),
            "train_loss_final": at(train, len(c) - 1), "valid_loss_final": at(valid, len(c) - 1),
            "gap_final": at(valid, len(c) - 1) - at(train, len(c) - 1),
            "valid_rise_after_best": at(valid, len(c) - 1) - at(valid, best) if has_valid else float("nan"),
            "still_improving_at_end": bool(has_valid and best >= len(c) - 1
                                           and (n_estimators is None or len(c) >= n_estimators)),
        })
    return pd.DataFrame(rows)


def summarize(fits: pd.DataFrame, n_estimators: int | None) -> dict[str, Any]:
    """Per class and overall: best iterations, gaps and the recommended n_estimators."""
    out: dict[str, Any] = {
        "loss": "logloss per boosting round; train = held-in sample of training genes, valid = held-out validation genes",
        "n_estimators": n_estimators, "headroom": HEADROOM, "per_class": {},
    }
    if fits.empty:
        out["note"] = "No per-round loss history was recorded by this strategy."
        out["recommended_n_estimators"] = None
        return out
    basis = fits[fits["scope"] == "cv"] if (fits["scope"] == "cv").any() else fits
    for cls in LABELS:
        f = basis[basis["cls"] == cls]
        if f.empty:
            continue
        out["per_class"][cls] = {
            "fits": int(len(f)), "best_iteration_mean": float(f["best_iteration"].mean()),
            "best_iteration_min": int(f["best_iteration"].min()), "best_iteration_max": int(f["best_iteration"].max()),
            "gap_at_best_mean": float(f["gap_at_best"].mean()), "gap_at_best_max": float(f["gap_at_best"].max()),
            "valid_rise_after_best_max": float(f["valid_rise_after_best"].max()),
            "recommended_n_estimators": int(math.ceil((f["best_iteration"].mean() + 1) * HEADROOM)),
        }
    out["recommended_n_estimators"] = int(math.ceil((basis["best_iteration"].mean() + 1) * HEADROOM))
    out["gap_at_best_mean"] = float(basis["gap_at_best"].mean())
    still = int(basis["still_improving_at_end"].sum())
    out["fits_still_improving_at_last_round"] = still
    out["basis"] = "CV fits" if (fits["scope"] == "cv").any() else "all fits with a history"
    if still:
        out["advice"] = (f"{still} of {len(basis)} fits had their lowest validation loss at the last round: "
                         "more trees (or a higher learning rate) may help.")
    elif n_estimators and out["recommended_n_estimators"] < n_estimators:
        out["advice"] = (f"Validation loss bottomed out early: about {out['recommended_n_estimators']} trees "
                         f"(of {n_estimators}) would do.")
    return out


def overfitting_analysis(result: TrainingResult, n_estimators: int | None) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    curves = loss_curves(result)
    fits = per_fit(curves, n_estimators)
    summary = summarize(fits, n_estimators)
    summary["fits"] = fits.to_dict(orient="records")
    return curves, fits, summary


def write_overfitting(out_dir: Path, result: TrainingResult, n_estimators: int | None, *, plots: bool) -> tuple[dict[str, Any], list[Path]]:
    d = out_dir / "overfitting_analysis"
    curves, fits, summary = overfitting_analysis(result, n_estimators)
    paths = [write_json(d / "overfitting_summary.json", summary),
             write_csv(d / "loss_curves.csv", curves, float_format="%.6g")]
    if plots:
        from metadask.analysis import plots as P

        fig = P.loss_curves_figure(curves, fits) if len(curves) else P.message_figure(summary["note"])
        paths += P.save_figure(fig, d / "loss_curves", ("png",))
    return summary, paths
