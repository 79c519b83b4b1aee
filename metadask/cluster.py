"""Connecting to Dask: a LocalCluster started for the user, or a remote scheduler.

Resolution order: an explicit ``client``; an explicit ``scheduler`` address;
``DASK_SCHEDULER_ADDRESS`` / dask config ``scheduler-address``; a client already active in
this process; otherwise a ``LocalCluster`` sized to the machine, shut down afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
from distributed import Client, LocalCluster, default_client

from metadask.config import env_scheduler_address, setting
from metadask.errors import ClusterError, option_error

log = logging.getLogger(__name__)


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


def describe(client: Client) -> ClusterSpec:
    info = client.scheduler_info(n_workers=-1)
    workers = info.get("workers", {})
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


def local_cluster_kwargs(
    n_workers: int | None, threads_per_worker: int | None, memory_limit: str | int | None
) -> dict[str, Any]:
    """LocalCluster settings sized to this machine (one thread per worker by default)."""
    cores = os.cpu_count() or 1
    if n_workers is not None and n_workers < 1:
        raise option_error("n_workers", "must be >= 1", n_workers, "Use e.g. --n-workers 2.")
    if threads_per_worker is not None and threads_per_worker < 1:
        raise option_error("threads_per_worker", "must be >= 1", threads_per_worker, "Use e.g. --threads-per-worker 1.")
    tpw = threads_per_worker or 1
    nw = n_workers or max(1, cores // tpw)
    if memory_limit is None:
        memory_limit = int(psutil.virtual_memory().total * 0.9 / nw)
    return {
        "n_workers": nw,
        "threads_per_worker": tpw,
        "memory_limit": memory_limit,
        "dashboard_address": ":0",
        "env": dict(setting("worker-env") or {}),
    }


@contextlib.contextmanager
def connect(
    *,
    client: Client | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
    connect_timeout: float | None = None,
) -> Iterator[Client]:
    """Yield a Dask client for the run; close what this call started, nothing else."""
    if client is not None:
        yield client
        return
    address = scheduler or env_scheduler_address()
    timeout = connect_timeout if connect_timeout is not None else setting("connect-timeout")
    if address:
        try:
            c = Client(address, timeout=f"{timeout}s", set_as_default=True)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(
                f"Cannot reach the Dask scheduler at {address} within {timeout:g} s ({type(exc).__name__}). "
                "Check the address and that the scheduler is running, or omit --scheduler to use a local cluster."
            ) from None
        log.info("Connected to scheduler %s", address)
        try:
            yield c
        finally:
            c.close()
        return
    existing = None
    with contextlib.suppress(ValueError):
        existing = default_client()
    if existing is not None:
        log.info("Using the active Dask client (%s)", existing.scheduler.address)
        yield existing
        return
    kwargs = local_cluster_kwargs(n_workers, threads_per_worker, memory_limit)
    with LocalCluster(**kwargs) as cluster, Client(cluster) as c:
        log.info(
            "Started a local cluster: %d workers x %d threads, dashboard %s",
            kwargs["n_workers"], kwargs["threads_per_worker"], c.dashboard_link,
        )
        yield c
