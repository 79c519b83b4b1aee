"""``distributed``: one model per class trained by ``xgboost.dask`` across every worker.

For data that no single worker can hold but the cluster's memory together can: each fit's
rows are a Dask array with one gene-aligned partition per group of genes sharing files
(:func:`~metadask.strategies.tasks.gene_partitions`), read by the workers themselves (the client only builds the
graph), persisted for the fit and handed to ``xgboost.dask`` as a ``DaskQuantileDMatrix``.

Per CV fold (genes from ``ctx.fold_plans``): three one-vs-rest binary boosters fit on the
fold's fit genes with early stopping on its validation genes (``valid`` history) and a
held-in sample of fit genes (``train`` history). The final boosters train on every gene
for the mean best iteration of their class's CV fits, as in ``single``. Out-of-fold margins
come from per-partition prediction tasks on the test genes of each fold.

Failure behaviour: ``xgboost.dask`` cannot continue when a worker taking part in a fit goes
away (its rows and its place in the collective are gone). Each fit runs under a watchdog
that checks the scheduler's workers, and under XGBoost's collective timeout, so that a lost
or frozen worker ends the run within a bounded time with a :class:`TrainingError` instead
of hanging. Settings (``dask.config``, defaults in ``metadask.yaml``, ``--set distributed.KEY=VALUE``):
``metadask.distributed.collective-timeout`` (seconds, default 300), ``metadask.distributed.fit-timeout``
(seconds per fit, default no limit), ``metadask.distributed.worker-wait`` (seconds to wait for workers,
default 60).

Determinism: for a fixed cluster layout the result is reproducible, but not bitwise across
worker counts: XGBoost's quantile sketch and histogram sums depend on how partitions land on
workers. ``single`` and ``batch-ensemble`` give that guarantee.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import dask.array as da
import numpy as np

from metadask.cluster import wait_for_workers, workers_info
from metadask.cluster.watch import watched
from metadask.config import setting as config_setting
from metadask.dataset.schema import LABELS
from metadask.dataset.source import Dataset
from metadask.errors import TrainingError
from metadask.journal import digest
from metadask.models.boosted import BoosterModel, FitOutput, booster_from_bytes, booster_to_bytes
from metadask.results import FoldModels, OOFParts, TrainingResult
from metadask.strategies.base import BOOSTING_OPTIONS, Strategy, TrainContext, fits_frame, fold_booster_model
from metadask.strategies.tasks import FitSpec, GeneSet, final_rounds, gene_partitions, read_rows, run_predict

log = logging.getLogger("metadask")

T = TypeVar("T")


def setting(key: str) -> Any:
    """A ``metadask.distributed.<key>`` value from dask.config (defaults in metadask.yaml)."""
    return config_setting(f"distributed.{key}")


# -- gene-aligned Dask arrays (also used by the incremental strategy) -------------------

def _read_xy(dataset: Dataset, gs: GeneSet, features: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    x, y, _ = read_rows(dataset, gs, features)
    return x, y.astype(np.int8)


def _first(pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return pair[0]


def _target(pair: tuple[np.ndarray, np.ndarray], cls: int) -> np.ndarray:
    return (pair[1] == cls).astype(np.float32)


def assign_workers(rows: Sequence[int], workers: Sequence[str]) -> list[str]:
    """A worker per partition: largest first onto the least-loaded worker (ties: lowest address).

    A pure function of the partition sizes and the sorted worker addresses, so the same
    cluster gets the same layout and hence the same model.
    """
    names = sorted(workers)
    load = [0] * len(names)
    out = [""] * len(rows)
    for i in sorted(range(len(rows)), key=lambda i: (-int(rows[i]), i)):
        w = min(range(len(names)), key=lambda j: (load[j], j))
        out[i] = names[w]
        load[w] += int(rows[i])
    return out


@dataclass
class PlacedRows:
    """A gene set's rows on the workers: X and the three one-vs-rest targets as Dask arrays.

    Every block is a future pinned to the worker :func:`assign_workers` chose, so
    ``xgboost.dask`` (which trains each worker on the partitions it holds) sees the same
    layout on every run; the arrays hold only futures, never data on the client.
    """

    x: da.Array
    targets: list[da.Array]
    workers: list[str]

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


def place_rows(client: Any, dataset: Dataset, parts: Sequence[tuple[GeneSet, int]], features: Sequence[str],
               workers: Sequence[str]) -> PlacedRows:
    """Read gene-aligned partitions on the workers (one task each) and keep them there."""
    from distributed import Future

    if not parts:
        raise TrainingError("No genes to build a training matrix from (an empty gene set reached xgboost.dask).")
    feats = list(features)
    where = assign_workers([n for _, n in parts], workers)
    token = f"{digest([dataset.url, [gs.genes for gs, _ in parts], feats])[:12]}-{uuid.uuid4().hex[:8]}"
    xname, tnames = f"metadask-dx-x-{token}", [f"metadask-dx-y{k}-{token}" for k in range(len(LABELS))]
    xs: dict[tuple, Future] = {}
    ts: list[dict[tuple, Future]] = [{} for _ in LABELS]
    reads = []
    for i, ((gs, _), w) in enumerate(zip(parts, where)):
        pin = {"workers": [w], "allow_other_workers": True, "pure": False}
        read = client.submit(_read_xy, dataset, gs, feats, key=f"metadask-dx-read-{token}-{i}", retries=2, **pin)
        reads.append(read)
        xs[(xname, i, 0)] = client.submit(_first, read, key=(xname, i, 0), **pin)
        for k in range(len(LABELS)):
            ts[k][(tnames[k], i)] = client.submit(_target, read, k, key=(tnames[k], i), **pin)
    for _ in watched(client, list(xs.values()) + [f for t in ts for f in t.values()], "the reads of the training rows"):
        pass  # a lost or paused worker ends the wait (metadask.cluster.watch)
    del reads  # the (x, y) tuples go; X shares the tuple's array, the targets are new
    rows = tuple(n for _, n in parts)
    x = da.Array(xs, xname, (rows, (len(feats),)), dtype=np.float32)
    targets = [da.Array(t, name, (rows,), dtype=np.float32) for t, name in zip(ts, tnames)]
    return PlacedRows(x, targets, list(where))


# -- the watchdog ---------------------------------------------------------------------

def _workers(client: Any) -> set[str]:
    return set(workers_info(client))


def guarded(client: Any, what: str, fn: Callable[[], T], *, timeout: float | None = None,
            poll: float | None = None, grace: float | None = None) -> T:
    """Run ``fn`` (which drives ``xgboost.dask``) in a thread and watch the cluster meanwhile.

    Raises :class:`TrainingError` when a worker that was present at the start leaves (after
    ``grace`` seconds for XGBoost to report it itself), when ``fn`` fails, or after
    ``timeout`` seconds. The thread is left to end on its own: XGBoost's collective timeout
    bounds how long its surviving workers can wait for the lost one.
    """
    poll = float(setting("poll-interval") if poll is None else poll)
    grace = float(setting("loss-grace") if grace is None else grace)
    timeout = setting("fit-timeout") if timeout is None else timeout
    before = _workers(client)
    t0 = time.perf_counter()
    lost_at: float | None = None
    lost: set[str] = set()
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="metadask-xgb-dask")
    future = pool.submit(fn)
    pool.shutdown(wait=False)
    while True:
        try:
            return future.result(timeout=poll)
        except concurrent.futures.TimeoutError:
            pass
        except TrainingError:
            raise
        except Exception as exc:  # XGBoostError, CommClosedError, ValueError from xgboost.dask, ...
            gone = lost or _wait_for_loss(client, before, grace if _looks_like_comm_error(exc) else 0.0, poll)
            if gone:
                raise _lost_error(what, gone) from exc
            hint = ""
            if "timeout" in str(exc).lower() and _looks_like_comm_error(exc):
                hint = (f" A worker stopped responding for longer than metadask.distributed.collective-timeout "
                        f"({int(setting('collective-timeout'))} s).")
            raise TrainingError(
                f"Distributed training of {what} failed: {type(exc).__name__}: {_summarise(exc)}.{hint} "
                "Check the worker logs; rerun, or use --strategy single / batch-ensemble."
            ) from exc
        now = time.perf_counter()
        if lost_at is None:
            lost = before - _workers(client)
            if lost:
                lost_at = now
                log.warning("Worker(s) %s left during distributed training of %s", ", ".join(sorted(lost)), what)
        elif now - lost_at >= grace:
            raise _lost_error(what, lost)
        if timeout is not None and now - t0 > float(timeout):
            raise TrainingError(
                f"Distributed training of {what} did not finish within {float(timeout):.0f} s "
                "(metadask.distributed.fit-timeout). Raise the limit, or check for a stuck worker."
            )


_COMM_WORDS = ("socket", "poll error", "allreduce", "allgather", "broadcast", "collective", "rabit", "tracker",
               "connection", "commclosed", "invalid worker address", "worker", "timed out", "timeout")


def _summarise(exc: BaseException) -> str:
    """The informative part of an exception message (XGBoost's: its ``- [file:line]: msg`` lines)."""
    text = str(exc).split("Stack trace:")[0].strip()
    if not text:
        return type(exc).__name__
    parts = [line.split("]:", 1)[1].strip() for line in text.splitlines() if line.lstrip().startswith("- [") and "]:" in line]
    parts = [p for p in parts if p]
    summary = "; ".join(parts[-2:]) if parts else text.splitlines()[0]
    return summary[:300].rstrip(".")


def _looks_like_comm_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(w in text for w in _COMM_WORDS)


def _wait_for_loss(client: Any, before: set[str], grace: float, poll: float) -> set[str]:
    """Workers of ``before`` that are gone, waiting up to ``grace`` s for the scheduler to notice.

    A killed worker breaks XGBoost's sockets at once, often before the scheduler has removed it.
    """
    deadline = time.perf_counter() + grace
    while True:
        gone = before - _workers(client)
        if gone or time.perf_counter() >= deadline:
            return gone
        time.sleep(min(poll, 0.25))


def _lost_error(what: str, lost: set[str]) -> TrainingError:
    return TrainingError(
        f"Worker {', '.join(sorted(lost))} left the cluster during distributed training of {what}; xgboost.dask "
        "cannot continue without it (its rows and its place in the collective are gone). Rerun when the cluster "
        "is stable (--resume reuses finished fits), or use --strategy batch-ensemble, which retries lost fits "
        "on other workers."
    )


# -- one xgboost.dask fit ---------------------------------------------------------------

def fit_dask_binary(
    client: Any,
    train: tuple[da.Array, da.Array],
    params: dict[str, Any],
    n_estimators: int,
    *,
    valid: tuple[da.Array, da.Array] | None = None,
    train_eval: tuple[da.Array, da.Array] | None = None,
    early_stopping_rounds: int = 0,
) -> FitOutput:
    """One binary fit with ``xgboost.dask`` on (X, 0/1 target) Dask arrays (quantile DMatrix).

    Early stopping watches ``valid`` (held-out genes); ``train_eval`` (a held-in sample)
    gives the training curve. The booster is trimmed to its best iteration.
    """
    from xgboost import dask as dxgb
    from xgboost.collective import Config

    t0 = time.perf_counter()
    max_bin = int(params.get("max_bin", 256))
    dtrain = dxgb.DaskQuantileDMatrix(client, train[0], train[1], max_bin=max_bin)
    evals = []
    for pair, name in ((train_eval, "train"), (valid, "valid")):
        if pair is not None:
            evals.append((dxgb.DaskQuantileDMatrix(client, pair[0], pair[1], max_bin=max_bin, ref=dtrain), name))
    use_es = early_stopping_rounds > 0 and valid is not None
    coll = int(setting("collective-timeout"))
    out = dxgb.train(
        client, dict(params), dtrain, num_boost_round=int(n_estimators), evals=evals or None,
        early_stopping_rounds=early_stopping_rounds if use_es else None, verbose_eval=False,
        coll_cfg=Config(timeout=coll, tracker_timeout=coll),
    )
    booster = out["booster"]
    best = int(booster.best_iteration) if use_es else int(n_estimators) - 1
    if use_es and best + 1 < booster.num_boosted_rounds():
        booster = booster[: best + 1]
    history = {name: [float(v) for v in h.get("logloss", [])] for name, h in out.get("history", {}).items()}
    return FitOutput(booster=booster_to_bytes(booster), best_iteration=best, n_trees=best + 1,
                     seconds=time.perf_counter() - t0, rows=int(train[0].shape[0]), history=history)


# -- the strategy -----------------------------------------------------------------------

class DistributedStrategy(Strategy):
    """One model trained by ``xgboost.dask`` over every worker (see the module docstring)."""

    name = "distributed"
    label = "Distributed XGBoost (xgboost.dask)"
    options = BOOSTING_OPTIONS
    settings = ("distributed",)

    def describe(self, ctx: TrainContext) -> str:
        return f"{self.label}, {ctx.cluster.n_workers} workers"

    def fit(self, ctx: TrainContext) -> TrainingResult:
        cfg, client = ctx.config, ctx.client
        params = cfg.xgb_params()
        esr = int(cfg.early_stopping_rounds)
        workers = wait_for_workers(
            client, max(1, ctx.cluster.n_workers), float(setting("worker-wait")), asked_by="the distributed strategy",
            fix="Start the workers, point --scheduler at a running cluster, or raise --set distributed.worker-wait=SECONDS.")
        log.info("xgboost.dask on %d workers; XGBoost's nthread follows each worker's threads; bitwise results "
                 "depend on the worker count", len(workers))
        specs: list[FitSpec] = []
        outputs: dict[str, FitOutput] = {}
        t_all = time.perf_counter()
        for fp in ctx.fold_plans:
            fold_specs = [
                FitSpec(key=f"cv-f{fp.fold}-{c}", scope="cv", cls=k, fold=fp.fold, fit=ctx.gene_set(fp.fit),
                        valid=ctx.gene_set(fp.valid), eval_genes=fp.train_eval, n_estimators=cfg.n_estimators,
                        early_stopping_rounds=esr, params=params)
                for k, c in enumerate(LABELS)
            ]
            specs += fold_specs
            self._run_fits(ctx, fold_specs, outputs, fit_genes=fp.fit, valid_genes=fp.valid,
                           eval_genes=fp.train_eval, what=f"CV fold {fp.fold}")
        final_specs = []
        for k, c in enumerate(LABELS):
            rounds = cfg.n_estimators
            if esr > 0:
                cv = [outputs[s.key].n_trees for s in specs if s.cls == k]
                rounds = final_rounds(cv)
            final_specs.append(FitSpec(key=f"final-{c}", scope="final", cls=k, fit=ctx.gene_set(ctx.index.genes),
                                       valid=None, eval_genes=(), n_estimators=rounds, early_stopping_rounds=0,
                                       params=params))
        specs += final_specs
        self._run_fits(ctx, final_specs, outputs, fit_genes=ctx.index.genes, valid_genes=(), eval_genes=(),
                       what="final model")
        log.info("Distributed training: %d fits in %.1f s", len(specs), time.perf_counter() - t_all)
        oof = self._predict_oof(ctx, outputs)
        model = BoosterModel([booster_from_bytes(outputs[f"final-{c}"].booster) for c in LABELS], ctx.features)
        model.kind = "distributed"
        model.info = {
            "strategy": self.name, "genes": ctx.index.n_genes, "rows": ctx.index.n_rows,
            "trees": {c: outputs[f"final-{c}"].n_trees for c in LABELS}, "workers": len(workers),
            "bitwise_deterministic_across_worker_counts": False,
        }
        threads = min(ctx.cluster.threads) if ctx.cluster.threads else 1
        for o in outputs.values():
            o.nthread = threads
        return TrainingResult(
            strategy=self.name, reason="", model=model, oof_parts=oof, fits=fits_frame(specs, outputs),
            histories={k: o.history for k, o in outputs.items() if o.history}, features=list(ctx.features),
            excluded=dict(ctx.excluded), folds=ctx.folds,
            details={"workers": sorted(workers), "collective_timeout_s": int(setting("collective-timeout"))},
            fold_models=FoldModels(lambda f: fold_booster_model(outputs, f"cv-f{f}", ctx.features),
                                   [fp.fold for fp in ctx.fold_plans]),
        )

    def _run_fits(self, ctx: TrainContext, specs: list[FitSpec], outputs: dict[str, FitOutput], *,
                  fit_genes: Sequence[str], valid_genes: Sequence[str], eval_genes: Sequence[str], what: str) -> None:
        """Fit ``specs`` (the three classes of one gene split) on data persisted once for all three."""
        digests = {s.key: ctx.spec_digest(s, extra={"strategy": self.name}) for s in specs}
        todo = []
        for s in specs:
            done = ctx.journaled(s, digests[s.key])
            if done is not None:
                outputs[s.key] = done
                log.info("%s %s: reused from the journal (%d trees)", what, s.key, done.n_trees)
            else:
                todo.append(s)
        if not todo:
            return
        client, ds, feats = ctx.client, ctx.dataset, ctx.features

        def load() -> tuple[PlacedRows | None, ...]:
            workers = sorted(_workers(client))
            return tuple(place_rows(client, ds, gene_partitions(ctx.index, genes), feats, workers) if genes else None
                         for genes in (fit_genes, valid_genes, eval_genes))

        t0 = time.perf_counter()
        train, valid, held_in = guarded(client, f"{what} (reading rows)", load)
        assert train is not None
        log.info("%s: %s rows persisted on the workers in %.1f s", what, f"{train.rows:,}", time.perf_counter() - t0)

        def pair(placed: PlacedRows | None, k: int) -> tuple[da.Array, da.Array] | None:
            return None if placed is None else (placed.x, placed.targets[k])

        try:
            for s in todo:
                out = guarded(client, f"{s.key} ({LABELS[s.cls]})", lambda s=s: fit_dask_binary(
                    client, pair(train, s.cls), s.params, s.n_estimators, valid=pair(valid, s.cls),
                    train_eval=pair(held_in, s.cls), early_stopping_rounds=s.early_stopping_rounds))
                outputs[s.key] = out
                ctx.record(s, digests[s.key], out)
                log.info("%s %s (%s): %d trees, %s rows, %.1f s", what, s.key, LABELS[s.cls], out.n_trees,
                         f"{out.rows:,}", out.seconds)
        finally:
            del train, valid, held_in  # release the persisted blocks before the next split

    def _predict_oof(self, ctx: TrainContext, outputs: dict[str, FitOutput]) -> OOFParts:
        """Margins of each fold's boosters for its test genes, one task per test partition."""
        client = ctx.client
        futures, folds = [], []
        for fp in ctx.fold_plans:
            fits = [outputs[f"cv-f{fp.fold}-{c}"] for c in LABELS]
            fits_future = client.scatter(fits, hash=False)
            for i, (gs, _) in enumerate(gene_partitions(ctx.index, fp.test)):
                futures.append(client.submit(run_predict, ctx.dataset, ctx.features, gs, fits_future,
                                             key=f"metadask-dxgb-oof-f{fp.fold}-{i}-{id(ctx)}", retries=2))
                folds.append(fp.fold)
        return ctx.oof_parts(futures, folds)
