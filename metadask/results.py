"""The one result type every strategy returns."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from metadask.dataset.schema import BASE_SCORE_COLUMNS, LABELS
from metadask.models.base import MetaModel, sigmoid

OOF_COLUMNS = (
    "gene", "position", "label", "neither_score", "donor_score", "acceptor_score",
    "raw_neither", "raw_donor", "raw_acceptor", "prob_neither", "prob_donor", "prob_acceptor", "fold", "weight",
)
"""Columns of the out-of-fold prediction frame (``raw_*`` uncalibrated, ``prob_*`` calibrated;
``weight``: the row's inverse inclusion probability, only for weighted datasets).

In memory (:class:`OOFParts`, on the workers) each part is compact, since together they hold
every row of the dataset: ``gene`` is categorical (the gene index's genes), ``label`` int8,
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
    and sort cost ~24 bytes a row of every row at once.
    """
    folds = oof["fold"].to_numpy()
    for f in np.unique(folds).tolist():
        yield int(f), np.flatnonzero(folds == f)


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


def compact_part(part: pd.DataFrame, genes: pd.Index, fold: int) -> pd.DataFrame:
    """A strategy's prediction part (``gene``, ``position``, ``label``, base scores, ``margin_*``,
    maybe ``weight``) in the compact types of :data:`OOF_COLUMNS`, with its CV ``fold``.

    Runs where the part is (on a worker). ``genes``: the gene index's genes, sorted, the
    categories of every part's ``gene`` (so parts concatenate as codes).
    """
    gene = part["gene"]
    if isinstance(gene.dtype, pd.CategoricalDtype):  # the part's own categories -> the index's
        where = genes.get_indexer(gene.cat.categories.astype(str))
        local = gene.cat.codes.to_numpy()
        codes = np.where(local >= 0, where[local], -1)
    else:
        codes = genes.get_indexer(gene.astype(str))
    if len(codes) and codes.min() < 0:
        raise ValueError(f"out-of-fold predictions of fold {fold} hold genes that are not in the gene index")
    position = part["position"].to_numpy() if "position" in part else np.arange(len(part))
    if len(position) and position.dtype.kind == "i" and -2**31 <= position.min() and position.max() < 2**31:
        position = position.astype(np.int32)
    cols: dict[str, Any] = {
        "gene": pd.Categorical.from_codes(codes, categories=genes),
        "position": position,
        "label": part["label"].to_numpy(dtype=np.int8)}
    for c in BASE_SCORE_COLUMNS:
        cols[c] = part[c].to_numpy(dtype=np.float64)
    for c in LABELS:
        cols[f"margin_{c}"] = part[f"margin_{c}"].to_numpy(dtype=OOF_FLOAT)
    if "weight" in part:
        cols["weight"] = part["weight"].to_numpy(dtype=np.float64)
    cols["fold"] = np.full(len(part), fold, dtype=np.int16)
    return pd.DataFrame(cols)


def concat_parts(parts: Sequence[pd.DataFrame], columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The parts' ``columns`` (all when None) as one frame (gene codes concatenated, not strings)."""
    frames = [p if columns is None else p[[c for c in columns if c in p]] for p in parts]
    if len(frames) == 1:
        return frames[0].reset_index(drop=True)
    return pd.concat(frames, ignore_index=True)


class PartInfo(NamedTuple):
    """What the client learns of an out-of-fold part: its rows and columns."""

    rows: int
    columns: tuple[str, ...]


def _part_info(part: pd.DataFrame) -> PartInfo:
    return PartInfo(len(part), tuple(part.columns))


def _part_table(part: pd.DataFrame, columns: Sequence[str], start: int, stop: int) -> Any:
    [table] = oof_tables(part.iloc[start:stop], columns, chunk_rows=max(1, stop - start))
    return table


class OOFParts:
    """Out-of-fold predictions kept as parts, each the rows of one CV fold, where they were made.

    With a Dask ``client`` the parts are futures: the frames stay in the workers' memory and
    every step that reads them (calibration's sample and its application, the per-fold
    metrics, the evaluation, the ``oof_predictions.parquet`` file) runs there, part by part,
    fold by fold or (the evaluation over every row) on one worker; the client receives only
    results whose size does not depend on the rows (or a bounded sample, or one file chunk at
    a time). Without a client the parts are local frames and the same steps run in this
    process (small data, tests, strategies that return a frame).

    Each part is compact (:func:`compact_part`). :meth:`frame` builds the whole frame here, for
    a user or a test (``TrainingResult.oof``); the trainer itself never calls it.
    """

    def __init__(self, parts: Sequence[Any], folds: Sequence[int], sizes: Sequence[int], columns: Sequence[str],
                 client: Any = None):
        self.parts = list(parts)
        self.folds = [int(f) for f in folds]
        self.sizes = [int(n) for n in sizes]
        self.columns = tuple(columns)
        self.client = client
        self.file: Any = None
        self._frame: pd.DataFrame | None = None

    @classmethod
    def of(cls, oof: OOFParts | pd.DataFrame, client: Any = None) -> OOFParts:
        """``oof`` as parts: a frame split by fold (scattered to the workers with a ``client``)."""
        if isinstance(oof, OOFParts):
            return oof
        parts, folds = [], []
        for f, rows in fold_rows(oof):
            parts.append(oof.iloc[rows].reset_index(drop=True))
            folds.append(f)
        sizes = [len(p) for p in parts]
        if client is not None and parts:
            parts = client.scatter(parts, hash=False)
        return cls(parts, folds, sizes, list(oof.columns), client)

    @classmethod
    def collect(cls, client: Any, futures: Sequence[Any], folds: Sequence[int], genes: Iterable[str],
                results: Callable[[Sequence[Any], str], Iterator[tuple[int, Any]]]) -> OOFParts:
        """Parts from a strategy's prediction ``futures`` (``folds[i]``: the CV fold whose models scored part ``i``).

        Each is made compact on its worker (:func:`compact_part`) and the original released;
        ``results(futures, what)`` waits for the small facts of each (rows, columns), logging
        as they land (``TrainContext.each_result``).
        """
        token = _token()
        [index] = client.scatter([pd.Index(sorted(genes), dtype=object)], broadcast=False, hash=False)
        parts = [client.submit(compact_part, f, index, int(fold), key=f"metadask-part-compact{i}-{token}", pure=False)
                 for i, (f, fold) in enumerate(zip(futures, folds))]
        infos: list[Any] = [None] * len(parts)  # each PartInfo, in part order
        info_futures = [client.submit(_part_info, p, key=f"metadask-part-rows{i}-{token}", pure=False) for i, p in enumerate(parts)]
        for f in futures:
            f.release()  # the compact part (a task on the same worker) holds the data from here on
        for i, info in results(info_futures, "out-of-fold predictions"):
            infos[i] = info
        return cls(parts, folds, [info.rows for info in infos], infos[0].columns if infos else (), client)

    # -- what the parts hold -------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(self.sizes)

    def __contains__(self, column: object) -> bool:
        return column in self.columns

    @property
    def fold_ids(self) -> list[int]:
        return sorted(set(self.folds))

    # -- running functions on the parts ------------------------------------------------------------
    def _ensure(self) -> None:
        """Once released, the parts are read back from :attr:`file` (analysis rerun on a finished run)."""
        if not self.parts and self.file is not None:
            local = OOFParts.of(pd.read_parquet(self.file))
            self.parts, self.folds, self.sizes, self.columns = local.parts, local.folds, local.sizes, local.columns

    def _submit(self, fn: Callable[..., Any], *args: Any, name: str = "") -> Any:
        if self.client is None:
            return fn(*args)
        return self.client.submit(fn, *args, pure=False, key=f"metadask-part-{name or getattr(fn, '__name__', 'fn')}-"
                                                              f"{_token()}")

    def _results(self, items: Sequence[Any], what: str) -> list[Any]:
        if self.client is None:
            return list(items)
        from metadask.cluster.watch import gather

        return gather(self.client, items, what)

    def map_parts(self, fn: Callable[..., Any], *args: Any, what: str, indexed: bool = False) -> list[Any]:
        """``fn(part, *args)`` (``fn(part, i, *args)`` when ``indexed``) for every part, in part order."""
        self._ensure()
        return self._results([self._submit(fn, p, *((i,) if indexed else ()), *args)
                              for i, p in enumerate(self.parts)], what)

    def map_folds(self, columns: Sequence[str], fn: Callable[[pd.DataFrame], Any], what: str) -> dict[int, Any]:
        """``fn(fold's rows)`` (only ``columns``) for every CV fold, by fold; on the workers, the folds in parallel."""
        self._ensure()
        items = {}
        for f in self.fold_ids:
            rows = self._submit(concat_parts, [p for p, pf in zip(self.parts, self.folds) if pf == f], list(columns), name="fold")
            items[f] = self._submit(fn, rows)
            del rows  # the scheduler keeps it until fn has run
        return dict(zip(items, self._results(list(items.values()), what)))

    def whole(self, columns: Sequence[str], fn: Callable[..., Any], *args: Any, what: str) -> Any:
        """``fn(every row (only columns), *args)``, computed on one worker."""
        self._ensure()
        rows = self._submit(concat_parts, self.parts, list(columns), name="rows")
        [out] = self._results([self._submit(fn, rows, *args)], what)
        return out

    def transform(self, fn: Callable[..., pd.DataFrame], *args: Any, columns: Sequence[str], what: str) -> None:
        """Replace every part by ``fn(part, *args)`` (holding ``columns``), waiting until all are made."""
        self._ensure()
        new = [self._submit(fn, p, *args) for p in self.parts]
        if self.client is not None:
            from metadask.cluster.watch import wait_all

            wait_all(self.client, new, what)
        self.parts, self.columns, self._frame = new, tuple(columns), None

    def tables(self, columns: Sequence[str], chunk_rows: int = 250_000) -> Iterator[Any]:
        """The parts' ``columns`` as pyarrow tables of at most ``chunk_rows`` rows (the file's plain types), in order.

        Each table is made on the part's worker and fetched alone (the next one is made
        meanwhile), so the client holds one or two chunks whatever the rows.
        """
        self._ensure()
        pieces = [(p, start, min(start + chunk_rows, n)) for p, n in zip(self.parts, self.sizes)
                  for start in range(0, n, chunk_rows)]
        if self.client is None:
            for p, start, stop in pieces:
                yield _part_table(p, columns, start, stop)
            return
        ahead: list[Any] = []
        for p, start, stop in pieces:
            ahead.append(self._submit(_part_table, p, list(columns), start, stop, name="table"))
            if len(ahead) == 2:
                [table] = self._results([ahead.pop(0)], "the out-of-fold file")
                yield table
        for fut in ahead:
            [table] = self._results([fut], "the out-of-fold file")
            yield table

    # -- the whole frame, here ------------------------------------------------------------------------
    def frame(self) -> pd.DataFrame:
        """Every row as one frame in this process (from the parts, or from :attr:`file` once they are released)."""
        if self._frame is None:
            if self.file is not None:
                self._frame = pd.read_parquet(self.file)
            else:
                parts = self.parts if self.client is None else [self.client.gather(p) for p in self.parts]
                self._frame = concat_parts(parts) if parts else pd.DataFrame(columns=list(self.columns))
        return self._frame

    def release(self, file: Any = None) -> None:
        """Let the workers drop the parts; :meth:`frame` then reads ``file`` (the run's ``oof_predictions.parquet``)."""
        for p in self.parts:
            if hasattr(p, "release"):
                p.release()
        self.parts, self.client, self.file = [], None, file
        self._frame = None


def _token() -> str:
    import uuid

    return uuid.uuid4().hex[:12]


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
    oof_parts
        Out-of-fold predictions for every row, a part per CV fold (or more), on the workers:
        every prediction comes from models that never saw the row's gene (columns
        :data:`OOF_COLUMNS`). A strategy may also return a plain frame; ``train()`` splits it.
        :attr:`oof` is the same rows as one frame here.
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
    oof_parts: OOFParts
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

    def __post_init__(self) -> None:
        if isinstance(self.oof_parts, pd.DataFrame):
            self.oof_parts = OOFParts.of(self.oof_parts)

    @property
    def oof(self) -> pd.DataFrame:
        """Every out-of-fold row as one frame in this process (built once, on first use).

        For users and tests: during a run the parts stay on the workers and ``train()`` never
        builds this frame; after the run it is read from ``oof_predictions.parquet``.
        Assigning a frame replaces the predictions (the steps after the strategy use it).
        """
        return self.oof_parts.frame()

    @oof.setter
    def oof(self, frame: pd.DataFrame) -> None:
        self.oof_parts = OOFParts.of(frame)

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
