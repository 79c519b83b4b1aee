"""Workers' memory during training: refuse workers too small, bound concurrent fits, never wait silently.

Three guards, used by :func:`metadask.training.train` and :class:`~metadask.strategies.base.TrainContext`:

* :func:`check_worker_memory` (right after connecting): a worker whose memory limit cannot
  hold a worker process with metadask's libraries and the smallest task (:data:`~metadask.plan.TASK_BASE_BYTES`)
  below Dask's pause threshold, or a worker already paused for memory, is refused before any
  work: such a worker would pause and every task would wait for it forever.
* :func:`apply_fit_slots` (after the plan): each worker gets a Dask worker resource
  :data:`~metadask.models.threads.FIT_RESOURCE` equal to the fits it can run at once within its
  memory (:func:`metadask.plan.concurrent_fits`, computed on the worker from its own limit,
  threads and current memory, by a worker plugin, so restarted and new workers get it too).
  Fit and prediction tasks ask for one slot each, and XGBoost's ``nthread`` is the worker's
  threads divided by its slots (:func:`~metadask.models.threads.fit_threads`).
* :func:`watched` (while waiting for results): a worker paused for memory longer than
  ``metadask.paused-worker-timeout`` seconds, or a cluster with no worker able to run a fit
  for longer than ``metadask.no-workers-timeout`` seconds, ends the run with a
  :class:`~metadask.errors.TrainingError`; a task lost with its workers (``KilledWorker``) or
  raising ``MemoryError`` becomes one line naming the task, the plan's estimate, the worker
  limit and what to change (:func:`memory_failure`). Finished fits stay in the journal, so
  ``--resume`` continues the run.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any

import dask.config
from distributed.diagnostics.plugin import WorkerPlugin

from metadask.cluster import memory_held, memory_limit_of, wait_for_workers, workers_info
from metadask.cluster.watch import watched as _watched
from metadask.config import setting
from metadask.dataset.memory import format_bytes
from metadask.errors import ClusterError, TrainingError
from metadask.models.threads import FIT_RESOURCE
from metadask.plan import TASK_BASE_BYTES, concurrent_fits, hard_limit

log = logging.getLogger("metadask")

PLUGIN_NAME = "metadask-fit-slots"
RESUME_HINT = "To continue, rerun with --resume (finished fits are kept in the journal)"


def pause_fraction() -> float:
    """The fraction of a worker's memory limit at which Dask pauses it (``distributed.worker.memory.pause``)."""
    for key in ("distributed.worker.memory.pause", "distributed.worker.memory.terminate"):
        value = dask.config.get(key, None)
        if value:
            return float(value)
    return 1.0


def plan_inputs(client: Any) -> dict[str, Any]:
    """What :func:`metadask.plan.choose_strategy` needs to know about the smallest worker besides its limit.

    ``threads_per_worker`` (its threads: tasks it runs at once), ``worker_held`` (its process
    memory now) and ``pause_fraction`` (Dask's pause threshold).
    """
    workers = workers_info(client)
    smallest = min(workers.values(), key=memory_limit_of) if workers else {}
    return {"threads_per_worker": int(smallest.get("nthreads") or 1), "worker_held": memory_held(smallest) if smallest else 0,
            "pause_fraction": pause_fraction()}


def check_worker_memory(client: Any, wait_timeout: float | None = None) -> None:
    """Refuse a worker too small to start, or already paused for memory (:class:`ClusterError`).

    A worker process with metadask, XGBoost, pandas and pyarrow loaded and the smallest task
    needs about :data:`~metadask.plan.TASK_BASE_BYTES` (an idle one alone 230-350 MiB); below
    that a worker pauses as soon as it works, and every task then waits for it. The limits a
    cluster started here asks for (``LocalCluster``) are checked before any worker has to
    connect: a worker that small may be restarted by its nanny as it starts and never stay
    connected. Then at least one worker must connect (``wait_timeout``, default
    ``metadask.worker-wait-timeout``), and each connected worker is checked.
    """
    pause = pause_fraction()
    for name, limit in sorted(spec_memory_limits(client).items()):
        if limit * pause < TASK_BASE_BYTES:
            raise _too_small(name, limit, pause, None)
    timeout = float(wait_timeout if wait_timeout is not None else setting("worker-wait-timeout"))
    wait_for_workers(client, 1, timeout, asked_by="training",
                     fix="Start workers (or check their logs: a worker that keeps restarting may be short of memory).")
    for address, info in sorted(workers_info(client).items()):
        limit = memory_limit_of(info)
        status = str(info.get("status", ""))
        if limit * pause < TASK_BASE_BYTES or status == "paused":
            raise _too_small(address, limit, pause, memory_held(info) if status == "paused" else None)


def spec_memory_limits(client: Any) -> dict[str, int]:
    """Memory limits (bytes) the client's own cluster asks of its workers (a ``SpecCluster`` such as ``LocalCluster``).

    Empty for a remote scheduler or a cluster that does not say.
    """
    from distributed.worker_memory import parse_memory_limit

    spec = getattr(getattr(client, "cluster", None), "worker_spec", None) or {}
    limits: dict[str, int] = {}
    for name, entry in spec.items():
        options = (entry or {}).get("options") or {}
        value = options.get("memory_limit")
        if value in (None, 0, "auto"):
            continue
        try:
            limit = parse_memory_limit(value, int(options.get("nthreads") or 1), logger=log)
        except (TypeError, ValueError):
            continue
        if limit:
            limits[str(name)] = int(limit)
    return limits


def _too_small(worker: str, limit: int, pause: float, paused_held: int | None) -> ClusterError:
    why = (f"it is paused for memory already ({format_bytes(paused_held)} held)" if paused_held is not None else
           f"a worker process with metadask's libraries and the smallest training task needs "
           f"~{format_bytes(TASK_BASE_BYTES)}, more than the {pause:.0%} of the limit at which Dask pauses it")
    return ClusterError(
        f"Worker {worker} has a {format_bytes(limit)} memory limit, too small to start training: {why}. "
        f"Give workers at least {format_bytes(_min_worker_memory(pause))} (--memory-limit), or fewer, larger "
        "workers (--n-workers)."
    )


def _min_worker_memory(pause: float) -> int:
    return int(2 * TASK_BASE_BYTES / pause)


# -- fit slots: a Dask worker resource per worker -----------------------------------------
class FitSlots(WorkerPlugin):
    """Worker plugin: sets :data:`FIT_RESOURCE` to the fits this worker can run at once.

    Computed on the worker (its own memory limit, threads and current memory), so every
    worker, including one restarted by its nanny or added later, gets its own figure.
    """

    name = PLUGIN_NAME
    idempotent = False

    def __init__(self, task_estimate: int, memory_fraction: float, pause_fraction: float):
        self.task_estimate = int(task_estimate)
        self.memory_fraction = float(memory_fraction)
        self.pause_fraction = float(pause_fraction)

    def slots(self, *, threads: int, memory_limit: int, held: int) -> int:
        n = concurrent_fits(self.task_estimate, threads=threads, budget=int(memory_limit * self.memory_fraction), held=held)
        if n == 0 and self.task_estimate <= hard_limit(memory_limit, self.pause_fraction, held):
            n = 1  # one fit over the budget but under the pause threshold (a requested strategy, warned about)
        return n

    async def setup(self, worker: Any) -> None:
        import psutil

        limit = int(getattr(worker.memory_manager, "memory_limit", 0) or psutil.virtual_memory().total)
        n = self.slots(threads=int(worker.state.nthreads), memory_limit=limit, held=psutil.Process().memory_info().rss)
        await worker.set_resources(**{FIT_RESOURCE: n})
        logging.getLogger("metadask").info("metadask: %d concurrent fits on this worker (%d threads, %s limit)",
                                           n, worker.state.nthreads, format_bytes(limit))

    def teardown(self, worker: Any) -> None:
        pass


def apply_fit_slots(client: Any, choice: Any) -> dict[str, float] | None:
    """Give every worker its fit slots for ``choice`` (a :class:`~metadask.plan.StrategyChoice`).

    Returns the resources each fit or prediction task asks for (``{FIT_RESOURCE: 1}``), or
    ``None`` when the strategy has no per-worker fit tasks or the workers cannot take the plugin
    (then tasks run one per thread, as Dask does by default, and a warning says so).
    """
    if getattr(choice, "concurrent_fits", None) is None:
        return None
    plugin = FitSlots(choice.task_estimate, float(setting("task-memory-fraction")), pause_fraction())
    try:
        client.register_plugin(plugin, name=PLUGIN_NAME)
    except Exception as exc:  # noqa: BLE001 - an old or foreign worker: fall back to Dask's one task per thread
        log.warning("Could not limit concurrent fits per worker (%s: %s); each worker runs one fit per thread",
                    type(exc).__name__, exc)
        return None
    slots = {a: (info.get("resources") or {}).get(FIT_RESOURCE, 0) for a, info in workers_info(client).items()}
    if slots and not any(slots.values()):
        raise TrainingError(
            f"No worker can hold one training task of ~{format_bytes(choice.task_estimate)} within its memory. Give "
            "workers more memory (--memory-limit), lower --max-genes-per-batch, or add workers.")
    return {FIT_RESOURCE: 1}


# -- waiting for results without hanging ---------------------------------------------------
def task_name(key: Any) -> str:
    """A readable name of a metadask task key: ``metadask-fit-cv-f0-donor-0123abcd...`` -> ``fit cv-f0-donor``."""
    text = str(key[0] if isinstance(key, tuple) else key)
    text = re.sub(r"^metadask-", "", text)
    text = re.sub(r"-(?:[0-9a-f]{8,}|\d{6,})$", "", text)
    kind, _, rest = text.partition("-")
    names = {"fit": "fit", "fits": "fits", "oof": "out-of-fold prediction", "part": "out-of-fold part"}
    return f"{names.get(kind, kind)} {rest}".strip()


def _fixes(ctx: Any) -> str:
    choice = ctx.plan.get("choice")
    name = getattr(choice, "name", "")
    first = ("--strategy auto or batch-ensemble (batches sized to the workers)" if name == "single" else
             "a lower --max-genes-per-batch")
    return f"{first}, a larger --memory-limit (bigger workers) or more workers"


def _estimate_text(ctx: Any) -> str:
    choice = ctx.plan.get("choice")
    est = getattr(choice, "task_estimate", 0)
    return f"estimated ~{format_bytes(est)}" if est else "no estimate"


def memory_failure(exc: BaseException, task: str, ctx: Any) -> TrainingError | None:
    """One line for a task lost to memory (``KilledWorker``, ``MemoryError``), or ``None`` for other errors."""
    from distributed import KilledWorker

    limit = format_bytes(ctx.cluster.min_memory)
    if isinstance(exc, KilledWorker):
        n = int(getattr(exc, "allowed_failures", 0)) + 1
        return TrainingError(
            f"Task '{task}' ({_estimate_text(ctx)}) was lost with its worker {n} time{'s' if n > 1 else ''} (killed, "
            f"most likely for exceeding the {limit} worker memory limit). {RESUME_HINT} and {_fixes(ctx)}.")
    if isinstance(exc, MemoryError):
        return TrainingError(
            f"Task '{task}' ({_estimate_text(ctx)}) ran out of memory (MemoryError) on a worker with a {limit} memory "
            f"limit. {RESUME_HINT} and {_fixes(ctx)}.")
    return None


@contextlib.contextmanager
def lost_to_memory(ctx: Any) -> Iterator[None]:
    """Turn a ``KilledWorker`` or ``MemoryError`` escaping a strategy into one :class:`TrainingError` line.

    :meth:`~metadask.strategies.base.TrainContext.result` names the task where it waits; this
    catches what a strategy waits for on its own (``distributed``, ``incremental``).
    """
    try:
        yield
    except Exception as exc:
        key = getattr(exc, "task", None)
        error = memory_failure(exc, task_name(key) if key is not None else "a training task", ctx)
        if error is None:
            raise
        raise error from None


def watched(client: Any, futures: Sequence[Any], what: str, ctx: Any = None) -> Iterator[Any]:
    """Yield ``futures`` as they finish, watched (:class:`metadask.cluster.watch.watched`) with the run's plan.

    The errors name the plan's estimate per task, what to change and ``--resume``; with a plan
    that gives fits a worker resource, workers without a fit slot count as unable to run them.
    """
    extra: dict[str, Any] = {"hint": RESUME_HINT + "."}
    if ctx is not None:
        extra.update(estimate=_estimate_text(ctx), fixes=_fixes(ctx),
                     resource=FIT_RESOURCE if ctx.plan.get("resources") else None)
    return iter(_watched(client, futures, what, **extra))
