"""The one result type every strategy returns."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from metadask.dataset.memory import trim_memory
from metadask.dataset.schema import BASE_SCORE_COLUMNS, LABELS
from metadask.models.base import MetaModel, sigmoid

OOF_COLUMNS = (
    "gene", "position", "label", "neither_score", "donor_score", "acceptor_score",
    "raw_neither", "raw_donor", "raw_acceptor", "prob_neither", "prob_donor", "prob_acceptor", "fold", "weight",
)
"""Columns of the out-of-fold prediction frame (``raw_*`` uncalibrated, ``prob_*`` calibrated;
``weight``: the row's inverse inclusion probability, only for weighted datasets).

In memory (``TrainingResult.oof``) the frame is compact, since it holds every row of the
dataset on the client: ``gene`` is categorical (the gene index's genes), ``label`` int8,
``fold`` int16, ``position`` int32 where it fits, the margins and ``prob_*`` float32 (the
margins are XGBoost's float32 output, so nothing is lost), the base scores float64 as read.
``raw_*`` is not held: it is ``sigmoid(margin_*)``, see :func:`raw_proba`, and is written to
``oof_predictions.parquet`` with the other columns."""

OOF_FLOAT = np.float32
"""dtype of the margins and calibrated probabilities held in memory."""


def raw_proba(oof: pd.DataFrame, rows: slice | np.ndarray | None = None) -> np.ndarray:
    """The uncalibrated one-vs-rest probabilities ``sigmoid(margin_*)`` (n x 3, float64) of ``oof`` (or ``rows`` of it)."""
    margins = [oof[f"margin_{c}"].to_numpy() for c in LABELS]
    return sigmoid(np.column_stack([m if rows is None else m[rows] for m in margins]).astype(np.float64))


def fold_rows(oof: pd.DataFrame) -> Iterator[tuple[int, np.ndarray]]:
    """(fold, its row numbers) of an out-of-fold frame, fold by fold in order.

    One comparison pass per fold instead of ``groupby("fold").indices``, whose factorised codes
    and sort cost ~24 bytes a row of every row at once (200 MiB at 8.5 M rows).
    """
    folds = oof["fold"].to_numpy()
    for f in np.unique(folds).tolist():
        yield int(f), np.flatnonzero(folds == f)


def map_folds(oof: pd.DataFrame, columns: Sequence[str], fn: Callable[[pd.DataFrame], Any], client: Any = None,
              what: str = "the per-fold figures") -> dict[int, Any]:
    """``fn(part)`` for each fold's rows of ``oof`` (only ``columns``), by fold.

    A fold at a time, copying only the columns ``fn`` reads. With a Dask ``client`` each fold's
    part is sent to a worker and ``fn`` runs there (the client keeps none of its working
    arrays: sorting and curves over millions of rows), the folds in parallel.
    """
    import uuid

    from metadask.cluster.watch import gather

    out: dict[int, Any] = {}
    token = uuid.uuid4().hex[:8]
    for fold, rows in fold_rows(oof):
        part = pd.DataFrame({c: oof[c].take(rows).to_numpy() if c != "gene" else oof[c].take(rows).array
                             for c in columns if c in oof})
        if client is None:
            out[fold] = fn(part)
        else:
            [data] = client.scatter([part], hash=False)  # on a worker now: the local copy can go
            out[fold] = client.submit(fn, data, pure=False, key=f"metadask-folds-{getattr(fn, '__name__', 'fn')}-{fold}-{token}")
        del part
        trim_memory()
    if client is not None and out:
        out = dict(zip(out, gather(client, list(out.values()), what)))
    return out


def oof_tables(oof: pd.DataFrame, columns: Sequence[str], chunk_rows: int = 250_000) -> Iterator[Any]:
    """``oof``'s ``columns`` (``raw_*`` computed from the margins) as pyarrow tables of ``chunk_rows`` rows.

    The file's types are the plain ones (gene string, position and fold int64, scores and
    probabilities float64), whatever the compact in-memory dtypes.
    """
    import pyarrow as pa

    for start in range(0, max(1, len(oof)), chunk_rows):
        rows = slice(start, start + chunk_rows)
        raw = raw_proba(oof, rows) if any(c.startswith("raw_") for c in columns) else None
        data: dict[str, Any] = {}
        for c in columns:
            if c.startswith("raw_"):
                data[c] = raw[:, LABELS.index(c[4:])]
            elif c == "gene":
                data[c] = pa.array(oof[c].iloc[rows].astype(str).to_numpy(), type=pa.string())
            elif c in ("position", "fold"):
                data[c] = oof[c].to_numpy()[rows].astype(np.int64)
            elif c == "label":
                data[c] = oof[c].to_numpy()[rows]
            else:
                data[c] = oof[c].to_numpy()[rows].astype(np.float64)
        yield pa.table(data)


class OOFAssembler:
    """The out-of-fold frame built from prediction parts as they arrive, without a second copy.

    Each part (a strategy's prediction task's frame: ``gene``, ``position``, ``label``, base
    scores, ``margin_*``, maybe ``weight``) is made compact when it lands (see
    :data:`OOF_COLUMNS`); :meth:`frame` then concatenates column by column, releasing each
    part's column as it goes, so the client peaks at about one frame plus one column, not two
    frames (``pd.concat`` of the parts).
    """

    def __init__(self, genes: Iterable[str], n_parts: int):
        self.categories = pd.Index(sorted(genes), dtype=object)
        self._parts: list[dict[str, np.ndarray] | None] = [None] * n_parts

    def add(self, i: int, part: pd.DataFrame, fold: int) -> None:
        """Part ``i`` (in the strategy's order) predicted by the models of CV fold ``fold``."""
        gene = part["gene"]
        if isinstance(gene.dtype, pd.CategoricalDtype):  # the part's own categories -> the index's
            where = self.categories.get_indexer(gene.cat.categories.astype(str))
            local = gene.cat.codes.to_numpy()
            codes = np.where(local >= 0, where[local], -1)
        else:
            codes = self.categories.get_indexer(gene.astype(str))
        codes = codes.astype(np.int16 if len(self.categories) < 2**15 else np.int32)
        if len(codes) and codes.min() < 0:
            raise ValueError(f"out-of-fold part {i} holds genes that are not in the gene index")
        # own copies: a received part's columns are views into its message buffers, which would
        # stay alive (the whole part) until the last of its columns is concatenated
        cols: dict[str, np.ndarray] = {
            "gene": codes,
            "position": part["position"].to_numpy(copy=True) if "position" in part else np.arange(len(part)),
            "label": part["label"].to_numpy(dtype=np.int8, copy=True)}
        for c in BASE_SCORE_COLUMNS:
            cols[c] = part[c].to_numpy(dtype=np.float64, copy=True)
        for c in LABELS:
            cols[f"margin_{c}"] = part[f"margin_{c}"].to_numpy(dtype=OOF_FLOAT, copy=True)
        if "weight" in part:
            cols["weight"] = part["weight"].to_numpy(dtype=np.float64, copy=True)
        cols["fold"] = np.full(len(part), fold, dtype=np.int16)
        self._parts[i] = cols
        trim_memory()  # the received part's pages, once the caller drops it

    def frame(self) -> pd.DataFrame:
        parts = [p for p in self._parts if p is not None]
        if len(parts) != len(self._parts):
            raise ValueError(f"{len(self._parts) - len(parts)} out-of-fold parts never arrived")
        self._parts = []
        data: dict[str, Any] = {}
        for name in list(parts[0]) if parts else []:
            data[name] = np.concatenate([p.pop(name) for p in parts])
            trim_memory()  # the parts' copies of this column were heap memory: hand it back now
        if not data:
            return pd.DataFrame(columns=["gene", "position", "label", *BASE_SCORE_COLUMNS, *(f"margin_{c}" for c in LABELS),
                                         "fold"])
        pos = data["position"]
        if len(pos) and pos.dtype.kind == "i" and -2**31 <= pos.min() and pos.max() < 2**31:
            data["position"] = pos.astype(np.int32)
        data["gene"] = pd.Categorical.from_codes(data["gene"], categories=self.categories)
        frame = pd.DataFrame(data, copy=False)
        del data, parts
        trim_memory()  # the parts' freed pages back to the system before calibration
        return frame


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
