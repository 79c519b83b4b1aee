"""Three one-vs-rest XGBoost boosters (neither, donor, acceptor) as one model, and the fit.

Boosters are saved in XGBoost's UBJSON format; nothing else is needed to rebuild them.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from metadask.dataset.schema import LABELS
from metadask.models.base import MetaModel
from metadask.models.calibration import Calibrator


def booster_from_bytes(raw: bytes | bytearray) -> xgb.Booster:
    b = xgb.Booster()
    b.load_model(bytearray(raw))
    return b


def booster_to_bytes(b: xgb.Booster) -> bytes:
    return bytes(b.save_raw(raw_format="ubj"))


@dataclass
class FitOutput:
    """What one binary fit returns to the client: small and pickle-free in content."""

    booster: bytes
    best_iteration: int
    n_trees: int
    seconds: float
    rows: int
    history: dict[str, list[float]] = field(default_factory=dict)
    """Per-round logloss: ``train`` (a held-in sample) and ``valid`` (held-out genes)."""
    nthread: int = 1
    peak_rss: int = 0


@dataclass
class FitMatrices:
    """The quantised matrices of one fit (training, and the evaluation sets built on its cuts).

    Built once per set of rows; the labels are set per class, so the three one-vs-rest fits
    of a batch can share one read and one quantisation (quantile cuts do not depend on the
    labels, so the trees are the same as with a matrix built per class).
    """

    train: xgb.QuantileDMatrix
    evals: list[tuple[xgb.QuantileDMatrix, str]]

    @classmethod
    def build(
        cls, x: np.ndarray, *, x_valid: np.ndarray | None = None, x_train_eval: np.ndarray | None = None,
        max_bin: int = 256, nthread: int = 1, weight: np.ndarray | None = None,
        weight_valid: np.ndarray | None = None, weight_train_eval: np.ndarray | None = None,
    ) -> FitMatrices:
        """``weight*``: per-row weights of the training rows and of the evaluation sets (or None)."""
        dtrain = xgb.QuantileDMatrix(x, max_bin=max_bin, nthread=nthread, weight=weight)
        evals = []
        if x_train_eval is not None and len(x_train_eval):
            evals.append((xgb.QuantileDMatrix(x_train_eval, ref=dtrain, max_bin=max_bin, nthread=nthread,
                                              weight=weight_train_eval), "train"))
        if x_valid is not None and len(x_valid):
            evals.append((xgb.QuantileDMatrix(x_valid, ref=dtrain, max_bin=max_bin, nthread=nthread,
                                              weight=weight_valid), "valid"))
        return cls(dtrain, evals)


def fit_binary(
    x: np.ndarray,
    y: np.ndarray,
    params: dict[str, Any],
    n_estimators: int,
    *,
    x_valid: np.ndarray | None = None,
    y_valid: np.ndarray | None = None,
    x_train_eval: np.ndarray | None = None,
    y_train_eval: np.ndarray | None = None,
    early_stopping_rounds: int = 0,
    nthread: int = 1,
    feature_names: Sequence[str] | None = None,
    weight: np.ndarray | None = None,
    weight_valid: np.ndarray | None = None,
    weight_train_eval: np.ndarray | None = None,
) -> FitOutput:
    """One binary XGBoost fit on a QuantileDMatrix, with optional early stopping.

    The booster is trimmed to its best iteration when early stopping is on. Evaluation uses a
    small held-in sample (``train``) and held-out genes (``valid``), never the training matrix.
    """
    t0 = time.perf_counter()
    m = FitMatrices.build(x, x_valid=x_valid, x_train_eval=x_train_eval, max_bin=params.get("max_bin", 256),
                          nthread=nthread, weight=weight, weight_valid=weight_valid, weight_train_eval=weight_train_eval)
    out = fit_matrices(m, y, params, n_estimators, y_valid=y_valid, y_train_eval=y_train_eval,
                       early_stopping_rounds=early_stopping_rounds, nthread=nthread)
    del m
    gc.collect()  # DMatrix inputs can sit in reference cycles until a collection runs
    out.seconds = time.perf_counter() - t0
    return out


def fit_matrices(
    m: FitMatrices,
    y: np.ndarray,
    params: dict[str, Any],
    n_estimators: int,
    *,
    y_valid: np.ndarray | None = None,
    y_train_eval: np.ndarray | None = None,
    early_stopping_rounds: int = 0,
    nthread: int = 1,
) -> FitOutput:
    """One binary fit on prepared matrices: set this class's labels, train, trim (see :func:`fit_binary`)."""
    t0 = time.perf_counter()
    p = {**params, "nthread": int(nthread)}
    m.train.set_label(y)
    for dm, name in m.evals:
        dm.set_label(y_train_eval if name == "train" else y_valid)
    history: dict[str, dict[str, list[float]]] = {}
    use_es = early_stopping_rounds > 0 and any(n == "valid" for _, n in m.evals)
    booster = xgb.train(
        p,
        m.train,
        num_boost_round=int(n_estimators),
        evals=m.evals,
        evals_result=history,
        early_stopping_rounds=early_stopping_rounds if use_es else None,
        verbose_eval=False,
    )
    best = int(booster.best_iteration) if use_es else int(n_estimators) - 1
    if use_es and best + 1 < booster.num_boosted_rounds():
        booster = booster[: best + 1]
    raw = booster_to_bytes(booster)
    del booster
    return FitOutput(
        booster=raw,
        best_iteration=best,
        n_trees=best + 1,
        seconds=time.perf_counter() - t0,
        rows=int(len(y)),
        history={name: list(map(float, h.get("logloss", []))) for name, h in history.items()},
        nthread=int(nthread),
    )


class BoosterModel(MetaModel):
    """Three binary boosters, one per class; margins are each booster's raw output."""

    kind = "single"

    def __init__(self, boosters: Sequence[xgb.Booster], features: Sequence[str], calibrators: Sequence[Calibrator] | None = None):
        super().__init__(features, calibrators)
        if len(boosters) != len(LABELS):
            raise ValueError("BoosterModel needs one booster per class")
        self.boosters = list(boosters)

    def predict_margin(self, x: np.ndarray) -> np.ndarray:
        return booster_margins(self.boosters, x, nthread=getattr(self, "nthread", None), device=getattr(self, "device", None))

    def contributions(self, x: np.ndarray) -> np.ndarray:
        return booster_contributions(self.boosters, x, device=getattr(self, "device", None))

    def importance(self) -> pd.DataFrame:
        return booster_importance(self.boosters, self.features)

    def describe(self) -> str:
        trees = ", ".join(f"{c} {b.num_boosted_rounds()}" for c, b in zip(LABELS, self.boosters))
        return f"{self.kind} model: 3 one-vs-rest boosters (trees: {trees}), {len(self.features)} features"

    def to_files(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        files = {f"boosters/{c}.ubj": booster_to_bytes(b) for c, b in zip(LABELS, self.boosters)}
        return files, {"boosters": [f"boosters/{c}.ubj" for c in LABELS]}

    @classmethod
    def from_files(cls, files: dict[str, bytes], settings: dict[str, Any], features: Sequence[str]) -> BoosterModel:
        return cls([booster_from_bytes(files[name]) for name in settings["boosters"]], features)


def booster_margins(boosters: Sequence[xgb.Booster], x: np.ndarray, nthread: int | None = None,
                    device: str | None = None) -> np.ndarray:
    """Margins of one booster per class for matrix ``x`` (n x len(boosters)).

    The one prediction path of every model (the ensemble's members use it too):
    ``inplace_predict`` on a float32 C-contiguous matrix reads it without building a DMatrix
    copy (a DMatrix of dense data costs about the matrix again, and its construction as much
    time as the trees' traversal for models of ~100 trees). ``nthread`` (when given) is set on
    the boosters first, so a worker's prediction uses its own threads, not every core; so is
    ``device`` (``--device cuda``: predict on the worker's GPU).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty((x.shape[0], len(boosters)), dtype=np.float64)
    for k, b in enumerate(boosters):
        if nthread:
            b.set_param({"nthread": int(nthread)})
        if device:
            b.set_param({"device": device})
        out[:, k] = b.inplace_predict(x, predict_type="margin")
    return out


def booster_contributions(boosters: Sequence[xgb.Booster], x: np.ndarray, nthread: int | None = None,
                          device: str | None = None) -> np.ndarray:
    """XGBoost's exact TreeSHAP contributions (``pred_contribs``): (n, n_boosters, features + 1).

    ``device="cuda"`` computes them on the GPU (XGBoost's GPUTreeShap).
    """
    if device:
        for b in boosters:
            b.set_param({"device": device})
    dm = xgb.DMatrix(x, nthread=nthread or -1)
    return np.stack([b.predict(dm, pred_contribs=True) for b in boosters], axis=1).astype(np.float64)


def booster_importance(boosters: Sequence[xgb.Booster], features: Sequence[str]) -> pd.DataFrame:
    """gain / weight / cover per class and feature (XGBoost names features f0, f1, ...)."""
    rows = []
    for k, b in enumerate(boosters):
        scores = {t: b.get_score(importance_type=t) for t in ("gain", "weight", "cover")}
        for j, f in enumerate(features):
            key = f"f{j}"
            rows.append({"cls": LABELS[k], "feature": f, **{t: float(scores[t].get(key, 0.0)) for t in scores}})
    return pd.DataFrame(rows)
