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
import time
from collections.abc import Iterator, Sequence
from typing import Any

import dask.config
from distributed.diagnostics.plugin import WorkerPlugin

from metadask.cluster import workers_info
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


def _held(info: dict[str, Any]) -> int:
    return int((info.get("metrics") or {}).get("memory") or 0)


def _limit(info: dict[str, Any]) -> int:
    import psutil

    return int(info.get("memory_limit") or psutil.virtual_memory().total)


def plan_inputs(client: Any) -> dict[str, Any]:
    """What :func:`metadask.plan.choose_strategy` needs to know about the smallest worker besides its limit.

    ``threads_per_worker`` (its threads: tasks it runs at once), ``worker_held`` (its process
    memory now) and ``pause_fraction`` (Dask's pause threshold).
    """
    workers = workers_info(client)
    smallest = min(workers.values(), key=_limit) if workers else {}
    return {"threads_per_worker": int(smallest.get("nthreads") or 1), "worker_held": _held(smallest) if smallest else 0,
            "pause_fraction": pause_fraction()}


def check_worker_memory(client: Any) -> None:
    """Refuse a worker too small to start, or already paused for memory (:class:`ClusterError`).

    A worker process with metadask, XGBoost, pandas and pyarrow loaded and the smallest task
    needs about :data:`~metadask.plan.TASK_BASE_BYTES` (an idle one alone 230-350 MiB); below
    that a worker pauses as soon as it works, and every task then waits for it.
    """
    pause = pause_fraction()
    for address, info in sorted(workers_info(client).items()):
        limit = _limit(info)
        status = str(info.get("status", ""))
        if limit * pause < TASK_BASE_BYTES or status == "paused":
            why = (f"it is paused for memory already ({format_bytes(_held(info))} held)" if status == "paused" else
                   f"a worker process with metadask's libraries and the smallest training task needs "
                   f"~{format_bytes(TASK_BASE_BYTES)}, more than the {pause:.0%} of the limit at which Dask pauses it")
            raise ClusterError(
                f"Worker {address} has a {format_bytes(limit)} memory limit, too small to start training: {why}. "
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
    names = {"fit": "fit", "fits": "fits", "oof": "out-of-fold prediction"}
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


class Watchdog:
    """Ends a wait when the cluster cannot make progress (see the module docs)."""

    def __init__(self, client: Any, what: str, ctx: Any = None):
        self.client, self.what, self.ctx = client, what, ctx
        self.paused_timeout = float(setting("paused-worker-timeout"))
        self.empty_timeout = float(setting("no-workers-timeout"))
        self.paused_since: dict[str, float] = {}
        self.empty_since: float | None = None
        self.needs_slot = bool(ctx is not None and ctx.plan.get("resources"))

    def check(self, waiting_for: str) -> None:
        now = time.monotonic()
        try:
            workers = workers_info(self.client)
        except Exception:  # noqa: BLE001 - the scheduler itself is gone: the client raises on its own
            return
        able = [a for a, i in workers.items()
                if not self.needs_slot or (i.get("resources") or {}).get(FIT_RESOURCE, 0) > 0]
        if able:
            self.empty_since = None
        else:
            self.empty_since = self.empty_since or now
            if now - self.empty_since > self.empty_timeout:
                raise TrainingError(
                    f"The cluster has had no worker able to run {waiting_for} for {self.empty_timeout:g} s "
                    f"({len(workers)} connected; metadask.no-workers-timeout). Start workers with enough memory "
                    f"(task {_estimate_text(self.ctx) if self.ctx is not None else 'size unknown'}). {RESUME_HINT}.")
        for a in list(self.paused_since):
            if a not in workers or workers[a].get("status") != "paused":
                del self.paused_since[a]
        for a, info in workers.items():
            if info.get("status") == "paused":
                since = self.paused_since.setdefault(a, now)
                if now - since > self.paused_timeout:
                    limit = _limit(info)
                    fixes = _fixes(self.ctx) if self.ctx is not None else "a larger --memory-limit or more workers"
                    raise TrainingError(
                        f"Worker {a} has been paused for memory for {self.paused_timeout:g} s ({format_bytes(_held(info))} "
                        f"of its {format_bytes(limit)} limit) while {waiting_for} waited "
                        f"({_estimate_text(self.ctx) if self.ctx is not None else 'no estimate'} per task; "
                        f"metadask.paused-worker-timeout). {RESUME_HINT} and {fixes}.")


def watched(client: Any, futures: Sequence[Any], what: str, ctx: Any = None) -> Iterator[Any]:
    """Yield ``futures`` as they finish, like ``as_completed``, checking the cluster between polls.

    Raises :class:`TrainingError` (after cancelling what is still pending) when the
    :class:`Watchdog` finds a worker paused too long or no worker able to run the tasks.
    """
    from distributed import wait

    pending = set(futures)
    dog = Watchdog(client, what, ctx)
    poll = float(setting("watchdog-interval"))
    checked = time.monotonic()
    while pending:
        try:
            done, pending = wait(list(pending), timeout=poll, return_when="FIRST_COMPLETED")
        except TimeoutError:  # nothing finished within the poll interval
            done = set()
        yield from done
        if pending and (not done or time.monotonic() - checked >= poll):
            checked = time.monotonic()
            try:
                dog.check(what)
            except TrainingError:
                client.cancel(list(pending))
                raise
