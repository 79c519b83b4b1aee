"""A Dask cluster on Kubernetes (``--cluster kubernetes``), through the dask-kubernetes operator.

:func:`kubernetes_cluster_spec` builds the ``DaskCluster`` resource (pure, no cluster is
contacted); :func:`kubernetes_client` starts it for one run and deletes it afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from dask.utils import parse_bytes
from distributed import Client

from metadask.config import setting
from metadask.errors import ClusterError, option_error

log = logging.getLogger("metadask.cluster")

_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_WORKER_COMMAND = ["dask", "worker"]


def k8s_quantity(value: str | int) -> str:
    """A Kubernetes memory quantity for ``value`` ('8Gi', '8GiB', '8GB' or bytes)."""
    try:
        n = parse_bytes(value) if isinstance(value, str) else int(value)
    except (ValueError, TypeError):
        n = 0
    if n <= 0:
        raise option_error("k8s_worker_memory", "must be a memory size", value, "Use e.g. --k8s-worker-memory 8Gi.")
    units = (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10), ("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3))
    exact = [f"{n // size}{unit}" for unit, size in units if n % size == 0]
    return min([*exact, str(n)], key=len)  # the shortest exact spelling: 8Gi, 8G, 1536Mi


def _base_cluster_spec(name: str, image: str, n_workers: int, *, use_operator: bool | None = None) -> dict[str, Any]:
    """``dask_kubernetes.operator.make_cluster_spec`` when installed, else the same shape."""
    if use_operator is not False:
        try:
            from dask_kubernetes.operator import make_cluster_spec
        except ImportError:
            if use_operator:
                raise
        else:
            return make_cluster_spec(name=name, image=image, n_workers=n_workers, worker_command=list(_WORKER_COMMAND))
    probe = {"httpGet": {"port": "http-dashboard", "path": "/health"}}
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"name": name},
        "spec": {
            "idleTimeout": 0,
            "worker": {
                "replicas": n_workers,
                "spec": {"containers": [{
                    "name": "worker", "image": image,
                    "args": [*_WORKER_COMMAND, "--name", "$(DASK_WORKER_NAME)", "--dashboard", "--dashboard-address", "8788"],
                    "env": None, "resources": None,
                    "ports": [{"name": "http-dashboard", "containerPort": 8788, "protocol": "TCP"}],
                }]},
            },
            "scheduler": {
                "spec": {"containers": [{
                    "name": "scheduler", "image": image,
                    "args": ["dask-scheduler", "--host", "0.0.0.0"],
                    "env": None, "resources": None,
                    "ports": [{"name": "tcp-comm", "containerPort": 8786, "protocol": "TCP"},
                              {"name": "http-dashboard", "containerPort": 8787, "protocol": "TCP"}],
                    "readinessProbe": {**probe, "initialDelaySeconds": 0, "periodSeconds": 1, "timeoutSeconds": 300},
                    "livenessProbe": {**probe, "initialDelaySeconds": 15, "periodSeconds": 20},
                }]},
                "service": {
                    "type": "ClusterIP",
                    "selector": {"dask.org/cluster-name": name, "dask.org/component": "scheduler"},
                    "ports": [{"name": "tcp-comm", "protocol": "TCP", "port": 8786, "targetPort": "tcp-comm"},
                              {"name": "http-dashboard", "protocol": "TCP", "port": 8787, "targetPort": "http-dashboard"}],
                },
            },
        },
    }


def kubernetes_cluster_spec(
    name: str,
    image: str,
    n_workers: int,
    worker_memory: str | int,
    namespace: str | None = None,
    *,
    worker_threads: int = 1,
    env: Mapping[str, str] | None = None,
    scheduler_memory: str | int = "2Gi",
    idle_timeout: int = 0,
    use_operator: bool | None = None,
) -> dict[str, Any]:
    """The ``DaskCluster`` custom resource metadask asks the dask-kubernetes operator for.

    Built with ``dask_kubernetes.operator.make_cluster_spec`` when installed (else the same
    shape), then: workers get ``--nthreads``/``--memory-limit`` matching their container,
    memory requests equal to limits (no surprise OOM kills from overcommit), a CPU request
    of ``worker_threads`` and no CPU limit (throttling makes XGBoost's threads stall), and
    the environment of dask config ``metadask.worker-env`` (``OMP_WAIT_POLICY=PASSIVE`` by
    default, from metadask.yaml) plus ``env``. Pure: no cluster is contacted.
    """
    for opt, value in (("cluster name", name), ("k8s_namespace", namespace)):
        if value is not None and (not isinstance(value, str) or len(value) > 63 or not _K8S_NAME.match(value)):
            raise option_error(opt, "must be a Kubernetes name (lowercase letters, digits and '-', at most 63)",
                               value, "Use e.g. 'metadask'.")
    if not image or not isinstance(image, str):
        raise option_error("k8s_image", "is required with --cluster kubernetes", image,
                           "Build and push deploy/kubernetes/Dockerfile, then pass --k8s-image REGISTRY/metadask:TAG.")
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise option_error("k8s_workers", "must be an integer >= 1", n_workers, "Use e.g. --k8s-workers 4.")
    if isinstance(worker_threads, bool) or not isinstance(worker_threads, int) or worker_threads < 1:
        raise option_error("threads_per_worker", "must be an integer >= 1", worker_threads, "Use e.g. --threads-per-worker 4.")
    memory = k8s_quantity(worker_memory)
    worker_env = {**{str(k): str(v) for k, v in (setting("worker-env") or {}).items()},
                  **{str(k): str(v) for k, v in (env or {}).items()}}

    spec = _base_cluster_spec(name, image, n_workers, use_operator=use_operator)
    if namespace:
        spec["metadata"]["namespace"] = namespace
    spec["metadata"]["labels"] = {"app.kubernetes.io/name": "metadask", "app.kubernetes.io/component": "dask-cluster"}
    spec["spec"]["idleTimeout"] = int(idle_timeout)
    worker = spec["spec"]["worker"]["spec"]["containers"][0]
    worker["args"] = [*worker["args"], "--nthreads", str(worker_threads), "--memory-limit", str(parse_bytes(memory))]
    worker["env"] = [{"name": k, "value": v} for k, v in worker_env.items()]
    worker["resources"] = {"requests": {"cpu": str(worker_threads), "memory": memory}, "limits": {"memory": memory}}
    scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
    smem = k8s_quantity(scheduler_memory)
    scheduler["env"] = [{"name": k, "value": v} for k, v in {k: v for k, v in worker_env.items() if k != "OMP_WAIT_POLICY"}.items()]
    scheduler["resources"] = {"requests": {"cpu": "1", "memory": smem}, "limits": {"memory": smem}}
    return spec


def start_kubernetes_cluster(spec: Mapping[str, Any], *, namespace: str | None = None, resource_timeout: int = 300) -> Any:
    """Create the ``DaskCluster`` ``spec`` with a dask-kubernetes operator ``KubeCluster``."""
    try:
        from dask_kubernetes.operator import KubeCluster
    except ImportError:
        raise ClusterError(
            "--cluster kubernetes needs the dask-kubernetes package. Install it with: pip install 'metadask[kubernetes]'."
        ) from None
    name = spec["metadata"]["name"]
    where = f"namespace '{namespace}'" if namespace else "the current namespace"
    log.info("Starting Kubernetes Dask cluster %s in %s (%d workers, image %s)", name, where,
             spec["spec"]["worker"]["replicas"], spec["spec"]["worker"]["spec"]["containers"][0]["image"])
    try:
        return KubeCluster(custom_cluster_spec=dict(spec), namespace=namespace, shutdown_on_close=True,
                           resource_timeout=resource_timeout, quiet=True)
    except Exception as exc:  # noqa: BLE001 - kr8s / kopf / API errors of many kinds
        _clean_up_failed_start(KubeCluster, name)
        raise ClusterError(
            f"Cannot start the Kubernetes Dask cluster '{name}' in {where}: {type(exc).__name__}: {exc}. "
            "Check kubectl access (KUBECONFIG), that the dask-kubernetes operator is installed in the cluster "
            "(see docs/kubernetes.md), and that the image can be pulled."
        ) from None


def _clean_up_failed_start(kube_cluster_class: Any, name: str) -> None:
    """Delete what a failed ``KubeCluster(...)`` may have created, now rather than at exit.

    dask-kubernetes keeps the half-started instance for an atexit reaper; when the API is
    unreachable that reaper only prints a second traceback, so close it here and, if even
    that fails (nothing can have been created then), tell the reaper to skip it.
    """
    for inst in list(getattr(kube_cluster_class, "_instances", ())):
        if getattr(inst, "name", None) != name:
            continue
        try:
            inst.close(timeout=30)
        except Exception:  # noqa: BLE001 - best effort
            inst.shutdown_on_close = False


@contextlib.contextmanager
def kubernetes_client(
    *, image: str | None, n_workers: int | None, worker_memory: str | int | None, namespace: str | None,
    threads_per_worker: int | None, connect_timeout: float,
) -> Iterator[Client]:
    """A client of a ``DaskCluster`` started for the block (defaults: 2 workers of 4Gi), deleted at its end."""
    spec = kubernetes_cluster_spec(
        f"metadask-{uuid.uuid4().hex[:8]}", image or "", n_workers if n_workers is not None else 2,
        worker_memory if worker_memory is not None else "4Gi", namespace, worker_threads=threads_per_worker or 1,
    )
    cluster = start_kubernetes_cluster(spec, namespace=namespace)
    try:
        with Client(cluster, timeout=f"{connect_timeout}s", set_as_default=True) as c:
            yield c
    finally:
        log.info("Shutting down Kubernetes Dask cluster %s", spec["metadata"]["name"])
        cluster.close()
