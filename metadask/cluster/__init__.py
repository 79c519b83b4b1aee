"""Connecting to Dask: a LocalCluster started for the user, a remote scheduler, or Kubernetes.

One module per concern: :mod:`~metadask.cluster.local` (a ``LocalCluster`` sized to the
machine), :mod:`~metadask.cluster.remote` (a scheduler at an address),
:mod:`~metadask.cluster.kubernetes` (a dask-kubernetes ``DaskCluster``),
:mod:`~metadask.cluster.workers` (what the workers offer, waiting for them, their versions),
:mod:`~metadask.cluster.report` (Dask's performance report). This module resolves which.

Resolution order of :func:`connect`:

1. an explicit ``client``;
2. an explicit ``scheduler`` address (``--scheduler``);
3. ``cluster="kubernetes"``: a dask-kubernetes operator ``KubeCluster`` started for the run;
4. ``DASK_SCHEDULER_ADDRESS``, then dask config ``scheduler-address``;
5. a client already active in this process;
6. otherwise a ``LocalCluster`` sized to the machine.

Whatever :func:`connect` starts it also shuts down; what it was given it leaves alone.
Before yielding it waits for ``min_workers`` and checks that every worker can import
metadask and xgboost at versions compatible with the client's (:func:`check_workers`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any, Literal

from distributed import Client, LocalCluster, default_client

from metadask.cluster.kubernetes import k8s_quantity, kubernetes_client, kubernetes_cluster_spec, start_kubernetes_cluster
from metadask.cluster.local import local_cluster_kwargs
from metadask.cluster.probe import worker_probe
from metadask.cluster.remote import connect_remote
from metadask.cluster.report import collect_performance_report
from metadask.cluster.workers import (
    ClusterSpec, check_workers, client_versions, describe, memory_held, memory_limit_of, wait_for_workers, worker_problem,
    workers_info,
)
from metadask.config import env_scheduler_address, setting
from metadask.errors import ConfigError, option_error

__all__ = [
    "CONNECT_OPTIONS", "ClusterKind", "ClusterSpec", "check_workers", "client_versions", "collect_performance_report",
    "connect", "describe", "k8s_quantity", "memory_held", "memory_limit_of", "kubernetes_cluster_spec", "local_cluster_kwargs", "start_kubernetes_cluster",
    "wait_for_workers", "worker_probe", "worker_problem", "workers_info",
]

log = logging.getLogger("metadask.cluster")

ClusterKind = Literal["local", "kubernetes"]

#: Keyword arguments of :func:`connect` besides ``client``; the CLI / ``train()`` pass these through.
CONNECT_OPTIONS = (
    "scheduler", "n_workers", "threads_per_worker", "memory_limit", "connect_timeout",
    "min_workers", "worker_wait_timeout", "performance_report",
    "cluster", "k8s_image", "k8s_workers", "k8s_worker_memory", "k8s_namespace",
)


def _positive(name: str, value: Any, fix: str, *, integer: bool) -> None:
    ok = (isinstance(value, int) if integer else isinstance(value, (int, float))) and not isinstance(value, bool)
    if value is not None and not (ok and value > 0):
        raise option_error(name, "must be a positive integer" if integer else "must be a positive number", value, fix)


@contextlib.contextmanager
def connect(
    *,
    client: Client | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
    connect_timeout: float | None = None,
    min_workers: int | None = None,
    worker_wait_timeout: float | None = None,
    performance_report: str | os.PathLike[str] | None = None,
    cluster: ClusterKind | None = None,
    k8s_image: str | None = None,
    k8s_workers: int | None = None,
    k8s_worker_memory: str | int | None = None,
    k8s_namespace: str | None = None,
    check_versions: bool = True,
    device: str | None = None,
) -> Iterator[Client]:
    """Yield a Dask client for the run; close what this call started, nothing else.

    Parameters
    ----------
    client
        Use this client as is (it is not closed).
    scheduler
        Address of a running scheduler (``--scheduler``); beats ``DASK_SCHEDULER_ADDRESS``,
        which beats dask config ``scheduler-address``.
    n_workers, threads_per_worker, memory_limit
        Size of the ``LocalCluster`` started when no scheduler is given
        (``threads_per_worker`` also sets the threads of Kubernetes workers).
    connect_timeout
        Seconds to reach a remote scheduler (default dask config ``metadask.connect-timeout``).
    min_workers, worker_wait_timeout
        Wait until ``min_workers`` workers are connected, failing after ``worker_wait_timeout``
        seconds (default ``metadask.worker-wait-timeout``, 120). Remote schedulers wait for 1
        worker by default, Kubernetes clusters for all of ``k8s_workers``.
    performance_report
        Write Dask's HTML performance report of the whole run to this file.
    cluster
        ``"kubernetes"`` starts a dask-kubernetes ``KubeCluster`` (``k8s_image``,
        ``k8s_workers``, ``k8s_worker_memory``, ``k8s_namespace``) and deletes it afterwards;
        ``"local"`` forces a ``LocalCluster``; ``None`` resolves as described in the module.
    check_versions
        Check the workers with :func:`check_workers` before yielding.
    device
        ``"cuda"`` (``--device cuda``): a local cluster is dask-cuda's ``LocalCUDACluster``, one
        worker per GPU; without dask-cuda that is a :class:`~metadask.errors.ConfigError`. A
        remote scheduler's or an existing client's workers are used as they are.
    """
    if cluster not in (None, "local", "kubernetes"):
        raise option_error("cluster", "must be 'local' or 'kubernetes'", cluster, "Use --cluster local or --cluster kubernetes.")
    if cluster is not None and scheduler:
        raise ConfigError(f"--scheduler cannot be combined with --cluster {cluster}. Pass one of them.")
    if cluster != "kubernetes":
        given = [f"--{o.replace('_', '-')}" for o, v in (("k8s_image", k8s_image), ("k8s_workers", k8s_workers),
                 ("k8s_worker_memory", k8s_worker_memory), ("k8s_namespace", k8s_namespace)) if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} only apply with --cluster kubernetes. Add --cluster kubernetes or drop them.")
    _positive("min_workers", min_workers, "Use e.g. --min-workers 2.", integer=True)
    _positive("worker_wait_timeout", worker_wait_timeout, "Use e.g. --worker-wait-timeout 300.", integer=False)
    _positive("connect_timeout", connect_timeout, "Use e.g. --connect-timeout 30.", integer=False)
    timeout = float(connect_timeout if connect_timeout is not None else setting("connect-timeout"))
    wait_timeout = float(worker_wait_timeout if worker_wait_timeout is not None
                         else setting("worker-wait-timeout"))

    sizing = {"n_workers": n_workers, "threads_per_worker": threads_per_worker, "memory_limit": memory_limit}

    def ignore_sizing(where: str, *keep: str) -> None:
        ignored = [f"--{k.replace('_', '-')}" for k, v in sizing.items() if v is not None and k not in keep]
        if ignored:  # never drop an option silently
            log.warning("%s %s only to a local cluster; ignored with %s", ", ".join(ignored),
                        "applies" if len(ignored) == 1 else "apply", where)

    with contextlib.ExitStack() as stack:
        address = None if cluster is not None else (scheduler or env_scheduler_address())
        wait_for = min_workers
        if client is not None:
            ignore_sizing("an existing client")
            c = client
        elif address:
            ignore_sizing(f"the scheduler at {address}")
            c = stack.enter_context(connect_remote(str(address), timeout))
            log.info("Connected to scheduler %s", address)
            wait_for = min_workers or 1  # no workers at all would make every computation wait forever
        elif cluster == "kubernetes":
            ignore_sizing("--cluster kubernetes (use --k8s-workers, --k8s-worker-memory)", "threads_per_worker")
            c = stack.enter_context(kubernetes_client(
                image=k8s_image, n_workers=k8s_workers, worker_memory=k8s_worker_memory, namespace=k8s_namespace,
                threads_per_worker=threads_per_worker, connect_timeout=timeout))
            wait_for = min_workers or (k8s_workers if k8s_workers is not None else 2)
        else:
            existing = None
            if cluster is None:
                with contextlib.suppress(ValueError):
                    existing = default_client()
            if existing is not None:
                ignore_sizing(f"the active Dask client ({existing.scheduler.address})")
                log.info("Using the active Dask client (%s)", existing.scheduler.address)
                c = existing
            else:
                kwargs = local_cluster_kwargs(n_workers, threads_per_worker, memory_limit)
                if min_workers is not None and min_workers > kwargs["n_workers"]:
                    raise option_error("min_workers", f"exceeds the local cluster's {kwargs['n_workers']} workers",
                                       min_workers, "Raise --n-workers or lower --min-workers.")
                local = stack.enter_context(_local_cluster(kwargs, device, sizing))
                c = stack.enter_context(Client(local))
                log.info("Started a local %scluster: %d workers x %d threads, dashboard %s",
                         "CUDA " if local is not None and type(local).__name__ == "LocalCUDACluster" else "",
                         len(local.workers), kwargs["threads_per_worker"], c.dashboard_link)
        if wait_for:
            wait_for_workers(c, wait_for, wait_timeout)
        if check_versions:
            check_workers(c)
        if performance_report is not None:
            stack.enter_context(collect_performance_report(c, performance_report))
        yield c


def _local_cluster(kwargs: dict[str, Any], device: str | None, sizing: dict[str, Any]) -> Any:
    """A LocalCluster, or with ``device`` "cuda[:n]" dask-cuda's LocalCUDACluster (one worker per GPU)."""
    if not device or not str(device).startswith("cuda"):
        return LocalCluster(**kwargs)
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise ConfigError(
            f"--device {device} starts one worker per GPU with dask-cuda's LocalCUDACluster, and dask-cuda is not "
            "installed. Install it (pip install dask-cuda), pass --scheduler of a cluster with GPU workers, or use "
            "--device cpu.") from None
    cuda = {k: v for k, v in kwargs.items() if k in ("threads_per_worker", "memory_limit", "dashboard_address", "env")}
    if sizing.get("n_workers") is not None:
        cuda["n_workers"] = sizing["n_workers"]  # else one per visible GPU
    if ":" in str(device):
        cuda["CUDA_VISIBLE_DEVICES"] = str(device).split(":", 1)[1]
    return LocalCUDACluster(**cuda)
