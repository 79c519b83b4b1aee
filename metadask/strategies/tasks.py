"""Functions that run on the workers: read a gene set's rows, fit one booster, predict.

Each task reads its own rows from the dataset (only the files holding its genes, with a
parquet filter on the gene column); the client never materialises training data.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from metadask.dataset.memory import process_peak_rss
from metadask.dataset.schema import BASE_SCORE_COLUMNS, LABELS
from metadask.dataset.rows import GeneSet, gene_partitions, gene_set, read_rows
from metadask.dataset.source import Dataset
from metadask.models.boosted import (
    FitMatrices, FitOutput, booster_from_bytes, booster_margins, fit_binary, fit_matrices,
)
from metadask.models.threads import fit_threads, worker_threads

@dataclass(frozen=True)
class FitSpec:
    """One binary fit: which class, which genes, how many rounds."""

    key: str
    scope: str
    cls: int
    fit: GeneSet
    valid: GeneSet | None
    eval_genes: tuple[str, ...]
    n_estimators: int
    early_stopping_rounds: int
    params: dict[str, Any] = field(hash=False, default_factory=dict)
    fold: int | None = None
    batch: int | None = None
    weight_power: float = 0.0
    """Rows of a weighted dataset enter the trees with weight ``sample_weight ** weight_power``
    (0: unweighted; 1: the full inverse inclusion probabilities)."""

    def describe(self) -> dict[str, Any]:
        return {
            "key": self.key, "scope": self.scope, "cls": self.cls, "fit": sorted(self.fit.genes),
            "valid": sorted(self.valid.genes) if self.valid else [], "eval": sorted(self.eval_genes),
            "n_estimators": self.n_estimators, "esr": self.early_stopping_rounds, "params": self.params,
            **({"weight_power": self.weight_power} if self.weight_power else {}),
        }


def _fit_rows(dataset: Dataset, features: Sequence[str], spec: FitSpec) -> tuple[
        np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(x, label codes, validation x, validation codes, held-in evaluation mask, tree weights, validation tree weights).

    One read per gene set: the tree weights (``sample_weight ** spec.weight_power``; ``None``
    unweighted) come from the same read as the features.
    """
    power = float(spec.weight_power) if spec.weight_power and dataset.weighted else 0.0

    def weights(meta: pd.DataFrame) -> np.ndarray | None:
        return meta[dataset.weight_column].to_numpy(dtype=np.float64) ** power if power else None

    x, y, meta = read_rows(dataset, spec.fit, features)
    w = weights(meta)
    xv = yv = wv = None
    if spec.valid is not None and spec.valid.genes:
        xv, yv, meta_v = read_rows(dataset, spec.valid, features)
        wv = weights(meta_v)
    mask = meta[dataset.gene_column].isin(spec.eval_genes).to_numpy() if spec.eval_genes else None
    return x, y, xv, yv, mask, w, wv


def _target(codes: np.ndarray | None, cls: int) -> np.ndarray | None:
    return None if codes is None else (codes == cls).astype(np.float32)


def final_rounds(cv_counts: Iterable[float]) -> int:
    """Rounds of a final fit on all genes: the mean of the same class's CV fits' best counts, rounded, >= 1.

    The one rule of every strategy with a final model (boosting rounds for ``single`` and
    ``distributed``, epochs for ``incremental``): the final model has no held-out genes to
    stop on, so it trains for as long as the CV fits found useful.
    """
    return max(1, int(round(float(np.mean([float(c) for c in cv_counts])))))


def run_fit(dataset: Dataset, features: Sequence[str], spec: FitSpec, cv: Sequence[FitOutput] | None = None) -> FitOutput:
    """Fit one one-vs-rest booster for ``spec`` on this worker.

    With ``cv`` (the same class's CV fits), the number of rounds is the mean of their best
    iterations (the final model trains on all genes without an early-stopping holdout).
    """
    nthread = fit_threads()
    x, y, xv, yv, mask, w, wv = _fit_rows(dataset, features, spec)
    target = _target(y, spec.cls)
    n_estimators, esr = spec.n_estimators, spec.early_stopping_rounds
    if cv:
        n_estimators = final_rounds(o.n_trees for o in cv)
        esr = 0
    out = fit_binary(
        x, target, spec.params, n_estimators,
        x_valid=xv, y_valid=_target(yv, spec.cls),
        x_train_eval=None if mask is None else x[mask], y_train_eval=None if mask is None else target[mask],
        early_stopping_rounds=esr, nthread=nthread, feature_names=features, weight=w, weight_valid=wv,
        weight_train_eval=None if w is None or mask is None else w[mask],
    )
    out.peak_rss = process_peak_rss()
    return out


def run_fits(dataset: Dataset, features: Sequence[str], specs: Sequence[FitSpec],
             cv: Sequence[Sequence[FitOutput]] | None = None) -> list[FitOutput]:
    """The one-vs-rest fits of ``specs`` (same rows, one class each), on one read and one quantisation.

    Each fit gives the same booster as :func:`run_fit` would (quantile cuts do not depend on the
    labels); the read and the quantisation are done once instead of once per class, and their
    time is shared among the fits' ``seconds``. The float32 matrix is freed before training.
    ``cv`` (one list per spec: the same class's CV fits) sizes final fits as in :func:`run_fit`.
    """
    first = specs[0]
    shared = (first.fit, first.valid, first.eval_genes, first.params.get("max_bin", 256), first.weight_power)
    if any((s.fit, s.valid, s.eval_genes, s.params.get("max_bin", 256), s.weight_power) != shared for s in specs):
        raise ValueError("run_fits: the fits must share their genes, max_bin and weights")
    nthread = fit_threads()
    x, y, xv, yv, mask, w, wv = _fit_rows(dataset, features, first)
    t0 = time.perf_counter()
    m = FitMatrices.build(x, x_valid=xv, x_train_eval=None if mask is None else x[mask],
                          max_bin=shared[3], nthread=nthread, weight=w, weight_valid=wv,
                          weight_train_eval=None if w is None or mask is None else w[mask])
    del x, xv
    setup = (time.perf_counter() - t0) / len(specs)
    outs = []
    for i, s in enumerate(specs):
        target = _target(y, s.cls)
        n_estimators, esr = s.n_estimators, s.early_stopping_rounds
        if cv and cv[i]:
            n_estimators, esr = final_rounds(o.n_trees for o in cv[i]), 0
        out = fit_matrices(m, target, s.params, n_estimators, y_valid=_target(yv, s.cls),
                           y_train_eval=None if mask is None else target[mask],
                           early_stopping_rounds=esr, nthread=nthread)
        out.seconds += setup
        out.peak_rss = process_peak_rss()
        outs.append(out)
    del m
    gc.collect()
    return outs


def margins_frame(meta: pd.DataFrame, y: np.ndarray, margins: np.ndarray, gene_column: str,
                  weight_column: str | None = None) -> pd.DataFrame:
    """The prediction frame: ids, label code, base scores, per-class margins (and ``weight`` when rows carry one)."""
    # categorical genes and float32 margins (XGBoost's own precision): a compact part to send to the client
    out = pd.DataFrame({"gene": pd.Categorical(meta[gene_column].astype(str).to_numpy())})
    out["position"] = meta["position"].to_numpy() if "position" in meta else np.arange(len(meta))
    out["label"] = y.astype(np.int8)
    for c in BASE_SCORE_COLUMNS:
        out[c] = meta[c].to_numpy(dtype=np.float64) if c in meta else np.nan
    for k, name in enumerate(LABELS):
        out[f"margin_{name}"] = margins[:, k].astype(np.float32)
    if weight_column is not None and weight_column in meta:
        out["weight"] = meta[weight_column].to_numpy(dtype=np.float64)
    return out


def run_predict(dataset: Dataset, features: Sequence[str], gs: GeneSet, fits: Sequence[FitOutput],
                device: str | None = None) -> pd.DataFrame:
    """Margins of one booster per class (``fits`` in class order) for a gene set's rows (on ``device``)."""
    x, y, meta = read_rows(dataset, gs, features)
    boosters = [booster_from_bytes(f.booster) for f in fits]
    for b in boosters if device else ():
        b.set_param({"device": device})
    margins = booster_margins(boosters, x, nthread=fit_threads())
    return margins_frame(meta, y, margins, dataset.gene_column, dataset.weight_column)
