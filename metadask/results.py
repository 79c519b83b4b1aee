"""The one result type every strategy returns."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from metadask.models.base import MetaModel

OOF_COLUMNS = (
    "gene", "position", "label", "neither_score", "donor_score", "acceptor_score",
    "raw_neither", "raw_donor", "raw_acceptor", "prob_neither", "prob_donor", "prob_acceptor", "fold", "weight",
)
"""Columns of the out-of-fold prediction frame (``raw_*`` uncalibrated, ``prob_*`` calibrated;
``weight``: the row's inverse inclusion probability, only for weighted datasets)."""


class FoldModels(Mapping[int, MetaModel]):
    """CV fold -> the (uncalibrated) model that never saw that fold's genes, built on demand.

    Strategies keep their fold fits anyway (as booster bytes); a fold's model object is built
    only when asked for, so a batch ensemble with many folds does not hold every fold's
    members in memory at once.
    """

    def __init__(self, build: Callable[[int], MetaModel], folds: Iterable[int]):
        self._build = build
        self._folds = sorted({int(f) for f in folds})

    def __getitem__(self, fold: int) -> MetaModel:
        if int(fold) not in self._folds:
            raise KeyError(fold)
        return self._build(int(fold))

    def __iter__(self) -> Iterator[int]:
        return iter(self._folds)

    def __len__(self) -> int:
        return len(self._folds)


@dataclass
class TrainingResult:
    """What a training run produced, whatever the strategy.

    Attributes
    ----------
    strategy, reason
        The strategy used and why it was chosen.
    model
        The final model (local; calibrated after :func:`metadask.training.train`).
    oof
        Out-of-fold predictions for every row: every prediction comes from models that never
        saw the row's gene (columns :data:`OOF_COLUMNS`).
    fits
        One row per boosted / linear fit: ``scope`` (cv / final / member), ``fold``, ``batch``,
        ``cls``, ``best_iteration``, ``n_trees``, ``rows``, ``seconds``, ``nthread``.
    histories
        Per fit key, the per-round loss: ``{"train": [...], "valid": [...]}``.
    features, excluded
        Features used (model order) and those excluded with their reasons.
    folds
        gene -> CV fold.
    details
        Strategy-specific facts (batches, members, weights, ensemble CV, memory plan).
    fold_models
        CV fold -> the model that scored that fold's genes out of fold (never saw them);
        full-body evaluation scores a training gene with its fold's model. Calibration sets
        each fold model's calibrators to those cross-fitted without the fold
        (:attr:`fold_calibrators`).
    """

    strategy: str
    reason: str
    model: MetaModel
    oof: pd.DataFrame
    fits: pd.DataFrame
    histories: dict[str, dict[str, list[float]]]
    features: list[str]
    excluded: dict[str, str]
    folds: pd.Series
    details: dict[str, Any] = field(default_factory=dict)
    fold_metrics: pd.DataFrame | None = None
    timings: dict[str, float] = field(default_factory=dict)
    out_dir: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    fold_models: Mapping[int, MetaModel] = field(default_factory=dict)
    fold_calibrators: dict[int, list[Any]] = field(default_factory=dict)

    def fold_model(self, fold: int) -> MetaModel:
        """The calibrated model of CV fold ``fold`` (its cross-fitted calibrators, the final thresholds)."""
        model = self.fold_models[int(fold)]
        if int(fold) in self.fold_calibrators:
            model.calibrators = list(self.fold_calibrators[int(fold)])
        else:
            model.calibrators = list(self.model.calibrators)
        return model

    def headline(self) -> str:
        """One line for the CLI: strategy, CV macro F1 and binary F1 (meta vs base)."""
        fm = self.fold_metrics
        if fm is None or fm.empty:
            return f"Trained ({self.strategy})."
        return (
            f"Trained {self.strategy} model: CV macro F1 {fm['macro_f1'].mean():.3f} +- {fm['macro_f1'].std(ddof=0):.3f}, "
            f"binary F1 meta {fm['meta_binary_f1'].mean():.3f} vs base {fm['base_binary_f1'].mean():.3f}"
            + (f"; results in {self.out_dir}" if self.out_dir else "")
        )
