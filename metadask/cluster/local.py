"""A ``LocalCluster`` sized to this machine, started when no scheduler is given."""

from __future__ import annotations

import os
from typing import Any

import psutil

from metadask.config import setting
from metadask.errors import option_error


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
