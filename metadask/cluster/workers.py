"""What the connected cluster offers and whether it can run metadask.

:func:`describe` reads the workers' threads and memory from the scheduler,
:func:`wait_for_workers` is the one wait for a number of workers (``--min-workers``, the
distributed strategy), and :func:`check_workers` checks that every worker imports metadask
and xgboost at versions compatible with the client's.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psutil
from distributed import Client

from metadask.cluster.probe import worker_probe
from metadask.errors import ClusterError, preview

log = logging.getLogger("metadask.cluster")


@dataclass(frozen=True)
class ClusterSpec:
    """What the connected cluster offers, read from the scheduler."""

    address: str
    dashboard: str | None
    n_workers: int
    threads: tuple[int, ...]
    memory_limits: tuple[int, ...]

    @property
    def min_memory(self) -> int:
        return min(self.memory_limits) if self.memory_limits else 0

    @property
    def total_threads(self) -> int:
        return sum(self.threads)


def workers_info(client: Client) -> dict[str, dict[str, Any]]:
    """Every connected worker's entry (address -> identity), asked of the scheduler directly.

    ``Client.scheduler_info(n_workers=-1)`` is not used: the client's periodic refresh asks
    for ``n_workers=0`` and can overwrite the answer just fetched (distributed 2026.8), so about
    one call in a thousand reports no workers at all.
    """
    return dict(client.sync(client.scheduler.identity, n_workers=-1).get("workers", {}))


def memory_limit_of(info: Mapping[str, Any]) -> int:
    """A worker's memory limit from its scheduler entry (this machine's memory when it has none)."""
    return int(info.get("memory_limit") or psutil.virtual_memory().total)


def memory_held(info: Mapping[str, Any]) -> int:
    """A worker's process memory as last reported to the scheduler."""
    return int((info.get("metrics") or {}).get("memory") or 0)


def describe(client: Client) -> ClusterSpec:
    """Read the workers' threads and memory limits from the scheduler."""
    workers = workers_info(client)
    try:
        dashboard = client.dashboard_link
    except Exception:  # noqa: BLE001 - no dashboard is fine
        dashboard = None
    return ClusterSpec(
        address=client.scheduler.address,
        dashboard=dashboard,
        n_workers=len(workers),
        threads=tuple(int(w["nthreads"]) for w in workers.values()),
        memory_limits=tuple(int(w.get("memory_limit") or psutil.virtual_memory().total) for w in workers.values()),
    )


def wait_for_workers(client: Client, n: int, timeout: float, *, asked_by: str = "--min-workers",
                     fix: str = "Start more workers, lower --min-workers, or raise --worker-wait-timeout.") -> set[str]:
    """Wait until ``n`` workers are connected; the connected workers' addresses.

    Raises :class:`ClusterError` after ``timeout`` seconds, naming how many came, who asked
    for them (``asked_by``) and ``fix``.
    """
    have = len(workers_info(client))
    if have < n:
        log.info("Waiting up to %g s for %d workers (%d connected) at %s", timeout, n, have, client.scheduler.address)
        try:
            client.wait_for_workers(n, timeout=timeout)
        except (TimeoutError, OSError):
            have = len(workers_info(client))
            raise ClusterError(
                f"Only {have} of the {n} workers asked for ({asked_by}) connected to {client.scheduler.address} "
                f"within {timeout:g} s. {fix}"
            ) from None
    return set(workers_info(client))


def client_versions() -> dict[str, str]:
    """metadask and xgboost versions in this process (what the workers must match)."""
    import xgboost

    from metadask._version import __version__

    return {"metadask": __version__, "xgboost": xgboost.__version__}


def _release(version: str, parts: int) -> tuple[int, ...]:
    nums = [int(m) for m in re.findall(r"\d+", version.split("+")[0])[:parts]]
    return tuple(nums + [0] * (parts - len(nums)))


def worker_problem(found: Mapping[str, Any], expected: Mapping[str, str]) -> str | None:
    """Why a worker with probe result ``found`` cannot run this client's metadask, or None.

    Compatible means: metadask importable with the same major.minor; xgboost importable with
    the same major version (models and training parameters change across xgboost majors).
    """
    problems = []
    for name, parts in (("metadask", 2), ("xgboost", 1)):
        have = found.get(name)
        if have is None:
            err = found.get(f"{name}_error") or "not importable"
            problems.append(f"{name} missing ({err})")
        elif _release(str(have), parts) != _release(expected[name], parts):
            problems.append(f"{name} {have} (client has {expected[name]})")
    return "; ".join(problems) or None


def check_workers(client: Client) -> dict[str, dict[str, Any]]:
    """Check that every worker can run metadask; return each worker's versions.

    Runs a small probe on every worker (``client.run``) that imports metadask and xgboost and
    reports their versions. Raises :class:`ClusterError` naming the workers that lack them or
    run incompatible versions (metadask major.minor, xgboost major), with the fix.
    """
    expected = client_versions()
    results = client.run(worker_probe, on_error="return")  # pickled by value: see metadask.cluster.probe
    bad: dict[str, str] = {}
    versions: dict[str, dict[str, Any]] = {}
    for worker, found in sorted(results.items()):
        if isinstance(found, OSError):  # the worker left (or is leaving): nothing of it to check
            log.warning("Worker %s did not answer the version check (%s); it is not checked", worker, found)
            continue
        if isinstance(found, BaseException):
            bad[worker] = f"the version probe failed ({type(found).__name__}: {found})"
            continue
        versions[worker] = found
        problem = worker_problem(found, expected)
        if problem:
            bad[worker] = problem
    if bad:
        names = {a: w.get("name") for a, w in workers_info(client).items()}
        label = {w: f"{w} ({names[w]})" if names.get(w) not in (None, w) else w for w in bad}
        details = preview(f"{label[w]} [{p}]" for w, p in bad.items())
        raise ClusterError(
            f"{len(bad)} of {len(results)} Dask workers cannot run metadask: {details}. "
            f"Install metadask=={expected['metadask']} and xgboost=={expected['xgboost']} in the worker image "
            "(e.g. build deploy/kubernetes/Dockerfile), or use workers that have them."
        )
    log.debug("Worker versions OK on %d workers (metadask %s, xgboost %s)", len(results), expected["metadask"], expected["xgboost"])
    return versions


