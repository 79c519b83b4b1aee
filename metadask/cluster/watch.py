"""Waiting for futures without hanging: every wait on the cluster watches the workers.

Dask waits forever for a task no worker can run: a worker paused for memory runs nothing, and
a cluster whose workers all left (or never came, or keep being restarted by their nanny) has
no one to run it. :class:`Watchdog` looks at the scheduler's view of the workers between
polls and ends such a wait with one :class:`~metadask.errors.TrainingError` line:

* a worker paused for memory longer than ``metadask.paused-worker-timeout`` seconds;
* no worker able to run the tasks (none connected, or none holding ``resource``) for longer
  than ``metadask.no-workers-timeout`` seconds.

:class:`watched` yields futures as they finish (like ``distributed.as_completed``, with
:meth:`watched.add` for bounded windows); :func:`gather` and :func:`compute` are the watched
``Client.gather`` and ``dask.compute``. Every stage waits through these, so no step of
``train``, ``predict`` or ``evaluate`` can wait silently.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from dask.utils import format_bytes

from metadask.cluster.workers import memory_held, memory_limit_of, workers_info
from metadask.config import setting
from metadask.errors import TrainingError

DEFAULT_FIXES = "a larger --memory-limit (bigger workers) or more workers"


class Watchdog:
    """Ends a wait when the cluster cannot make progress (see the module docs).

    ``resource``: tasks need this worker resource (workers without it cannot run them);
    ``estimate``: the planned memory per task, as text; ``fixes``: what the user can change;
    ``hint``: a sentence added to every error (how to continue).
    """

    def __init__(self, client: Any, what: str, *, resource: str | None = None, estimate: str = "",
                 fixes: str = DEFAULT_FIXES, hint: str = ""):
        self.client, self.what, self.resource = client, what, resource
        self.estimate, self.fixes, self.hint = estimate, fixes, (f" {hint}" if hint else "")
        self.paused_timeout = float(setting("paused-worker-timeout"))
        self.empty_timeout = float(setting("no-workers-timeout"))
        self.paused_since: dict[str, float] = {}
        self.empty_since: float | None = None

    def check(self) -> None:
        now = time.monotonic()
        try:
            workers = workers_info(self.client)
        except Exception:  # noqa: BLE001 - the scheduler itself is gone: the client raises on its own
            return
        able = [a for a, i in workers.items() if self.resource is None or (i.get("resources") or {}).get(self.resource, 0) > 0]
        if able:
            self.empty_since = None
        else:
            self.empty_since = self.empty_since or now
            if now - self.empty_since > self.empty_timeout:
                raise TrainingError(
                    f"The cluster has had no worker able to run {self.what} for {self.empty_timeout:g} s "
                    f"({len(workers)} connected; metadask.no-workers-timeout). Start workers with enough memory"
                    f"{f' (task {self.estimate})' if self.estimate else ''}, or check the workers' logs.{self.hint}")
        for a in list(self.paused_since):
            if a not in workers or workers[a].get("status") != "paused":
                del self.paused_since[a]
        for a, info in workers.items():
            if info.get("status") == "paused":
                since = self.paused_since.setdefault(a, now)
                if now - since > self.paused_timeout:
                    raise TrainingError(
                        f"Worker {a} has been paused for memory for {self.paused_timeout:g} s ({format_bytes(memory_held(info))} "
                        f"of its {format_bytes(memory_limit_of(info))} limit) while {self.what} waited "
                        f"({f'{self.estimate} per task; ' if self.estimate else ''}metadask.paused-worker-timeout). "
                        f"{self.hint} Use {self.fixes}.")


class watched:  # noqa: N801 - used like distributed.as_completed
    """Iterate ``futures`` as they finish, checking the cluster (:class:`Watchdog`) between polls.

    On a :class:`~metadask.errors.TrainingError` what is still pending is cancelled. More
    futures can be added while iterating (:meth:`add`), as with ``as_completed``.
    """

    def __init__(self, client: Any, futures: Iterable[Any], what: str, **watchdog: Any):
        self.client = client
        self.pending = set(futures)
        self.dog = Watchdog(client, what, **watchdog)

    def add(self, future: Any) -> None:
        self.pending.add(future)

    def __iter__(self) -> Iterator[Any]:
        from distributed import wait

        poll = float(setting("watchdog-interval"))
        checked = time.monotonic()
        while self.pending:
            try:
                done, _ = wait(list(self.pending), timeout=poll, return_when="FIRST_COMPLETED")
            except TimeoutError:  # nothing finished within the poll interval
                done = set()
            self.pending -= set(done)
            yield from done
            if self.pending and (not done or time.monotonic() - checked >= poll):
                checked = time.monotonic()
                try:
                    self.dog.check()
                except TrainingError:
                    self.client.cancel(list(self.pending))
                    raise


def wait_all(client: Any, futures: Sequence[Any], what: str, **watchdog: Any) -> None:
    """Wait until every future is done (the results stay where they are), watched; the first failed task raises at once."""
    futures = list(futures)
    for fut in watched(client, futures, what, **watchdog):
        if fut.status == "error":
            client.cancel([f for f in futures if f is not fut])
            fut.result()  # raises the task's exception


def gather(client: Any, futures: Sequence[Any], what: str, **watchdog: Any) -> list[Any]:
    """``client.gather(futures)`` (results in order), watched; the first failed task raises at once."""
    futures = list(futures)
    wait_all(client, futures, what, **watchdog)
    return client.gather(futures)


def compute(tasks: Sequence[Any], what: str, client: Any = None) -> list[Any]:
    """``dask.compute(*tasks)`` on the active distributed client through a watched wait (plain dask without one)."""
    if client is None:
        try:
            from distributed import default_client

            client = default_client()
        except ValueError:
            client = None
    if client is None:
        import dask

        return list(dask.compute(*tasks))
    return gather(client, client.compute(list(tasks)), what)
