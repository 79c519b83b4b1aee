"""The strategy interface and the context every strategy receives.

A strategy turns a :class:`TrainContext` (dataset, gene index, features, folds, cluster
client, options) into a :class:`~metadask.results.TrainingResult`: out-of-fold margins for
every row plus a final local model. Calibration, metrics and artifacts are done by
:func:`metadask.training.train` from that result alone, identically for every strategy.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import pandas as pd

from metadask.cluster import ClusterSpec
from metadask.config import TrainConfig, setting_changed
from metadask.dataset.index import GeneIndex
from metadask.dataset.schema import LABELS
from metadask.dataset.source import Dataset
from metadask.journal import Journal, digest
from metadask.models.boosted import BoosterModel, FitOutput, booster_from_bytes
from metadask.plan import FoldPlan
from metadask.results import OOFParts, TrainingResult
from metadask.strategies.capacity import memory_failure, task_name, watched
from metadask.strategies.tasks import FitSpec, GeneSet, gene_set, run_fit, run_fits

log = logging.getLogger("metadask")


@dataclass
class TrainContext:
    """Everything a strategy needs; built once by :func:`metadask.training.train`."""

    client: Any
    dataset: Dataset
    index: GeneIndex
    config: TrainConfig
    features: list[str]
    excluded: dict[str, str]
    folds: pd.Series
    fold_plans: list[FoldPlan]
    cluster: ClusterSpec
    journal: Journal | None = None
    plan: dict[str, Any] = field(default_factory=dict)
    _fingerprint: dict[str, list[Any]] | None = field(default=None, init=False, repr=False)

    @property
    def tree_weight_power(self) -> float:
        """Power of the rows' inclusion weights fed to the trees (0 when the dataset has none)."""
        return float(self.config.tree_weight_power) if self.dataset.weighted else 0.0

    def gene_set(self, genes: Sequence[str]) -> GeneSet:
        return gene_set(self.index, genes)

    def data_fingerprint(self) -> dict[str, list[Any]]:
        """file -> [size, modification marker, footer statistics digest], read once per run.

        The first call also checks it against the journal's (``--resume`` logs which files
        changed since the journaled fits, and why).
        """
        if self._fingerprint is None:
            rows = self.dataset.fingerprint()
            if self.journal is not None:
                self.journal.check_data(rows)
            self._fingerprint = {row[0]: row[1:] for row in rows}
        return self._fingerprint

    def spec_digest(self, spec: FitSpec, extra: Any = None) -> str:
        """Digest of everything that determines a fit, including the fingerprints of the files it reads."""
        fp = self.data_fingerprint()
        eval_files = self.index.files_for(spec.eval_genes) if spec.eval_genes else ()
        files = sorted({*spec.fit.files, *(spec.valid.files if spec.valid else ()), *eval_files})
        return digest({"spec": spec.describe(), "features": self.features, "data": self.dataset.url,
                       "rows": self.index.n_rows, "extra": extra, "files": {f: fp.get(f) for f in files}})

    def journaled(self, spec: FitSpec, key_digest: str) -> FitOutput | None:
        """The finished fit the journal holds for ``spec`` with this digest (``--resume``), or None."""
        return self.journal.get(spec.key, key_digest) if self.journal is not None else None

    @property
    def resources(self) -> dict[str, float] | None:
        """Dask resources each fit or prediction task asks for: one of its worker's fit slots (the plan's concurrency rule)."""
        return self.plan.get("resources")

    def record(self, spec: FitSpec, key_digest: str, out: FitOutput) -> None:
        """Journal a finished fit so that ``--resume`` can reuse it."""
        if self.journal is not None:
            self.journal.put(spec.key, key_digest, out)

    def submit_fit(self, spec: FitSpec, cv: Sequence[Any] | None = None, *, priority: int = 0) -> Any:
        """A future (or a journaled result) for one fit. ``cv``: futures of CV fits to size it."""
        key_digest = self.spec_digest(spec, extra=None if cv is None else "final")
        done = self.journaled(spec, key_digest)
        if done is not None:
            return done
        return self.client.submit(
            run_fit, self.dataset, self.features, spec, cv,
            key=f"metadask-fit-{spec.key}-{key_digest[:12]}", priority=priority, pure=False, retries=2,
            resources=self.resources,
        )

    def submit_fits(self, specs: Sequence[FitSpec], cv: Sequence[Sequence[Any]] | None = None, *,
                    priority: int = 0) -> list[Any]:
        """Futures (or journaled results) for fits that share their rows, one per spec, in order.

        The fits not in the journal run as one task that reads the rows once
        (:func:`~metadask.strategies.tasks.run_fits`); each spec still gets its own future
        (and journal entry), so callers treat them like :meth:`submit_fit`'s. ``cv``: one list
        per spec of the CV fits that size it (final fits, as in :meth:`submit_fit`).
        """
        import operator

        digests = [self.spec_digest(s, extra=None if cv is None else "final") for s in specs]
        done = [self.journaled(s, d) for s, d in zip(specs, digests)]
        todo = [i for i, o in enumerate(done) if o is None]
        if len(todo) < 2:
            return [o if o is not None else self.submit_fit(s, None if cv is None else cv[i], priority=priority)
                    for i, (s, o) in enumerate(zip(specs, done))]
        group = self.client.submit(
            run_fits, self.dataset, self.features, [specs[i] for i in todo], None if cv is None else [cv[i] for i in todo],
            key=f"metadask-fits-{specs[todo[0]].key}-{digest(sorted(digests[i] for i in todo))[:12]}",
            priority=priority, pure=False, retries=2, resources=self.resources,
        )
        out: list[Any] = list(done)
        for j, i in enumerate(todo):
            out[i] = self.client.submit(operator.getitem, group, j, key=f"metadask-fit-{specs[i].key}-{digests[i][:12]}",
                                        priority=priority, pure=False)
        return out

    def collect(self, items: dict[str, tuple[FitSpec, Any]], what: str, on_done: Callable[[str, FitOutput], None] | None = None) -> dict[str, FitOutput]:
        """Wait for fits, logging a line per finished fit and journaling each as it lands."""
        from distributed import Future

        results: dict[str, FitOutput] = {}
        futures = {}
        for key, (spec, item) in items.items():
            if isinstance(item, Future):
                futures[item] = key
            else:
                results[key] = item
                log.info("%s %s: reused from the journal (%d trees)", what, key, item.n_trees)
        total, t0 = len(items), time.perf_counter()
        for fut in watched(self.client, list(futures), f"the {what}s", self):
            key = futures[fut]
            out = self.result(fut, f"{what} {key}")
            spec = items[key][0]
            results[key] = out
            self.record(spec, self.spec_digest(spec, extra="final" if spec.scope == "final" else None), out)
            if on_done:
                on_done(key, out)
            log.info(
                "[%d/%d] %s %s (%s): %d trees, %s rows, %.1f s (elapsed %.0f s)",
                len(results), total, what, key, LABELS[spec.cls], out.n_trees, f"{out.rows:,}", out.seconds,
                time.perf_counter() - t0,
            )
        return results

    def each_result(self, futures: Sequence[Any], what: str) -> Iterator[tuple[int, Any]]:
        """(position in ``futures``, result) as each task finishes, watched, logging a line each (frames: with their rows).

        Each future is released once its result is taken: the caller holds the only copy.
        """
        position = {f.key: i for i, f in enumerate(futures)}  # the strategies give every task its own key
        t0 = time.perf_counter()
        for n, fut in enumerate(watched(self.client, list(futures), what, self), 1):
            part = self.result(fut, task_name(fut.key))
            fut.release()
            if len(futures) > 1:
                n_rows = len(part) if isinstance(part, pd.DataFrame) else getattr(part, "rows", None)
                rows = f", {n_rows:,} rows" if n_rows is not None else ""
                log.info("[%d/%d] %s%s (elapsed %.0f s)", n, len(futures), what, rows, time.perf_counter() - t0)
            yield position[fut.key], part

    def gather_logged(self, futures: Sequence[Any], what: str) -> list[Any]:
        """Gather ``futures`` in order, logging a line as each finishes."""
        results: list[Any] = [None] * len(futures)
        for i, part in self.each_result(futures, what):
            results[i] = part
        return results

    def oof_parts(self, futures: Sequence[Any], folds: Sequence[int]) -> OOFParts:
        """The out-of-fold predictions of prediction tasks (``folds[i]``: the CV fold whose models scored part ``i``).

        The parts stay on the workers, made compact there
        (:meth:`~metadask.results.OOFParts.collect`); the client waits for each, logging a line
        as it lands, and receives only its number of rows.
        """
        return OOFParts.collect(self.client, futures, folds, self.index.genes, self.each_result)

    def result(self, future: Any, task: str) -> Any:
        """``future.result()``; a task lost to memory becomes one :class:`~metadask.errors.TrainingError` line."""
        try:
            return future.result()
        except Exception as exc:
            error = memory_failure(exc, task, self)
            if error is None:
                raise
            raise error from None


def fits_frame(specs: Sequence[FitSpec], outputs: dict[str, FitOutput]) -> pd.DataFrame:
    """One row per fit, for :attr:`TrainingResult.fits`."""
    rows = []
    for s in specs:
        o = outputs[s.key]
        rows.append({
            "key": s.key, "scope": s.scope, "fold": s.fold, "batch": s.batch, "cls": LABELS[s.cls],
            "best_iteration": o.best_iteration, "n_trees": o.n_trees, "rows": o.rows,
            "seconds": round(o.seconds, 3), "nthread": o.nthread, "peak_rss": o.peak_rss,
        })
    return pd.DataFrame(rows)


def fold_booster_model(outputs: dict[str, FitOutput], prefix: str, features: Sequence[str]) -> BoosterModel:
    """The three one-vs-rest boosters ``{prefix}-{class}`` of ``outputs`` as one model (a CV fold's)."""
    return BoosterModel([booster_from_bytes(outputs[f"{prefix}-{c}"].booster) for c in LABELS], list(features))


BOOSTING_OPTIONS = frozenset({"n_estimators", "learning_rate", "max_depth", "subsample", "colsample_bytree", "max_bin",
                              "min_child_weight", "early_stopping_rounds"})
"""TrainConfig options of the boosted one-vs-rest fits."""
ENSEMBLE_OPTIONS = frozenset({"ensemble_method", "ensemble_cv", "max_genes_per_batch"})
"""TrainConfig options of the batch ensemble."""
FINAL_MODEL_OPTIONS = frozenset({"final_model"})
"""``--final-model refit|cv-ensemble``: read by the strategies that can ship their CV fold models as the final model."""
STRATEGY_SETTINGS = ("ensemble-cv-members", "distributed", "incremental")
"""``metadask.*`` settings (metadask.yaml) that belong to one strategy each."""


class Strategy(abc.ABC):
    """A way of training: subclass, set ``name``, implement :meth:`fit`, then register it."""

    name: ClassVar[str] = "abstract"
    label: ClassVar[str] = "Abstract strategy"
    supports_row_weights: ClassVar[bool] = False
    """True when the fits take the rows' inclusion weights (``--tree-weight-power``)."""
    options: ClassVar[frozenset[str] | None] = None
    """Which of :data:`BOOSTING_OPTIONS` | :data:`ENSEMBLE_OPTIONS` | :data:`FINAL_MODEL_OPTIONS` this strategy reads (None: all)."""
    settings: ClassVar[tuple[str, ...]] = ()
    """Which of :data:`STRATEGY_SETTINGS` this strategy reads."""

    def __init__(self, config: TrainConfig):
        self.config = config

    @abc.abstractmethod
    def fit(self, ctx: TrainContext) -> TrainingResult:
        """Train on ``ctx`` and return out-of-fold margins for every row plus a final model.

        ``result.oof_parts`` (:meth:`TrainContext.oof_parts`, or a plain frame) must hold
        ``gene``, ``position``, ``label``, the base scores, ``margin_{neither,donor,acceptor}``
        and ``fold`` for every row of the dataset, each predicted by models that never saw the
        row's gene.
        """

    def describe(self, ctx: TrainContext) -> str:
        """The summary's "Training Strategy" line."""
        return self.label


def ignored_options(config: TrainConfig, strategy: type[Strategy]) -> list[str]:
    """The options set away from their defaults that ``strategy`` does not read (CLI spelling).

    A third-party strategy that does not declare :attr:`Strategy.options` reads them all.
    """
    if strategy.options is None:
        return []
    defaults = {f.name: f.default for f in fields(config)}
    known = BOOSTING_OPTIONS | ENSEMBLE_OPTIONS | FINAL_MODEL_OPTIONS
    out = [f"--{name.replace('_', '-')}" for name in sorted(known - strategy.options)
           if getattr(config, name) != defaults[name]]
    out += [f"--set {key}{'.*' if key in ('distributed', 'incremental') else ''}" for key in STRATEGY_SETTINGS
            if key not in strategy.settings and setting_changed(key)]
    return out
