"""Connecting to Dask: a LocalCluster started for the user, a remote scheduler, or Kubernetes.

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

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dask.config
import psutil
from dask.utils import parse_bytes
from distributed import Client, LocalCluster, default_client

from metadask.config import env_scheduler_address, setting
from metadask.errors import ClusterError, ConfigError, option_error, preview

log = logging.getLogger(__name__)

ClusterKind = Literal["local", "kubernetes"]

#: Keyword arguments of :func:`connect` besides ``client``; the CLI / ``train()`` pass these through.
CONNECT_OPTIONS = (
    "scheduler", "n_workers", "threads_per_worker", "memory_limit", "connect_timeout",
    "min_workers", "worker_wait_timeout", "performance_report",
    "cluster", "k8s_image", "k8s_workers", "k8s_worker_memory", "k8s_namespace",
)

_DEFAULT_WORKER_WAIT = 120.0  # seconds; dask config metadask.worker-wait-timeout overrides


def _config(key: str, default: Any) -> Any:
    return dask.config.get(f"metadask.{key}", default)


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


# -- remote schedulers -------------------------------------------------------------------
def _handshake(address: str, timeout: float) -> None:
    """Open and close one comm to ``address``, the Dask handshake included, within ``timeout``.

    ``Client(address, timeout=...)`` bounds the TCP connect but not the handshake read, so a
    port that accepts connections and never answers (a wrong service, a dead port-forward)
    would hang it forever. This pre-flight bounds the whole exchange. It runs its own event
    loop in a helper thread so it also works where a loop is already running (Jupyter).
    """
    from distributed.comm import connect as comm_connect
    from distributed.security import Security

    async def go() -> None:
        comm = await asyncio.wait_for(
            comm_connect(address, timeout=timeout, **Security().get_connection_args("client")), timeout
        )
        await comm.close()

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="metadask-handshake") as pool:
        pool.submit(asyncio.run, go()).result()


def _connect_remote(address: str, timeout: float) -> Client:
    def unreachable(reason: str) -> ClusterError:
        return ClusterError(
            f"Cannot reach the Dask scheduler at {address} within {timeout:g} s ({reason}). "
            "Check the address and that the scheduler is running, or omit --scheduler "
            "(and DASK_SCHEDULER_ADDRESS) to use a local cluster."
        )

    try:
        _handshake(address, timeout)
    except ValueError as exc:  # unknown scheme, malformed address
        raise ClusterError(
            f"'{address}' is not a Dask scheduler address ({exc}). Use e.g. --scheduler tcp://host:8786."
        ) from None
    except (OSError, TimeoutError, asyncio.TimeoutError) as exc:
        raise unreachable(f"{type(exc).__name__}: {exc}" if str(exc) else "no answer") from None
    except Exception as exc:  # noqa: BLE001 - something answered, but not a Dask scheduler
        raise unreachable(f"the service there does not speak the Dask protocol: {type(exc).__name__}") from None
    try:
        return Client(address, timeout=f"{timeout}s", set_as_default=True)
    except (OSError, TimeoutError) as exc:
        raise unreachable(type(exc).__name__) from None


def wait_for_workers(client: Client, n: int, timeout: float) -> None:
    """Wait until ``n`` workers are connected; :class:`ClusterError` naming how many came."""
    have = len(workers_info(client))
    if have >= n:
        return
    log.info("Waiting up to %g s for %d workers (%d connected) at %s", timeout, n, have, client.scheduler.address)
    try:
        client.wait_for_workers(n, timeout=timeout)
    except TimeoutError:
        have = len(workers_info(client))
        raise ClusterError(
            f"Only {have} of the {n} workers asked for (--min-workers) connected to {client.scheduler.address} "
            f"within {timeout:g} s. Start more workers, lower --min-workers, or raise --worker-wait-timeout."
        ) from None


# -- worker environment check ---------------------------------------------------------------
# The probe is compiled from source into a module that is not importable anywhere, so
# cloudpickle ships it by value: a worker without metadask can still run it and say so.
# (A function defined in metadask would be pickled by reference and fail to unpickle there.)
_PROBE_SOURCE = '''
def probe():
    import importlib
    import importlib.metadata
    import platform
    out = {"python": platform.python_version()}
    for name in ("metadask", "xgboost"):
        try:
            module = importlib.import_module(name)
            version = getattr(module, "__version__", None) or importlib.metadata.version(name)
            out[name] = str(version)
        except BaseException as exc:  # a broken install may raise anything on import
            out[name] = None
            out[name + "_error"] = f"{type(exc).__name__}: {exc}"
    return out


def import_error(name):
    import importlib

    try:
        importlib.import_module(name)
    except BaseException as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
'''
_probe_ns: dict[str, Any] = {"__name__": "metadask_worker_probe_by_value"}
exec(compile(_PROBE_SOURCE, "<metadask worker probe>", "exec"), _probe_ns)  # noqa: S102 - fixed source above
worker_probe = _probe_ns["probe"]
_remote_import_error = _probe_ns["import_error"]


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
    results = client.run(worker_probe, on_error="return")
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


# -- performance report -------------------------------------------------------------------
@contextlib.contextmanager
def collect_performance_report(client: Client, filename: str | os.PathLike[str]) -> Iterator[None]:
    """Write Dask's HTML performance report of everything run inside the block to ``filename``.

    Written also when the block fails (useful for diagnosis); a failure to write the report
    then is logged rather than hiding the original error.
    """
    from distributed import performance_report as dask_performance_report

    path = os.fspath(filename)
    # the scheduler renders the report with bokeh: fail now, not when a long run ends
    missing = client.run_on_scheduler(_remote_import_error, "bokeh")
    if missing:
        raise ClusterError(
            f"--performance-report needs bokeh on the Dask scheduler ({client.scheduler.address}: {missing}). "
            "Install it there (pip install 'bokeh>=3.1'; the deploy/kubernetes image has it) or drop --performance-report."
        )
    if "://" not in path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    report = dask_performance_report(filename=path)
    with client.as_current():
        report.__enter__()
        try:
            yield
        except BaseException:
            try:
                report.__exit__(None, None, None)
            except Exception as exc:  # noqa: BLE001 - keep the original error
                log.warning("Could not write the performance report %s: %s", path, exc)
            raise
        report.__exit__(None, None, None)
    log.info("Wrote Dask performance report %s", path)


# -- Kubernetes -----------------------------------------------------------------------------
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
    the environment ``OMP_WAIT_POLICY=PASSIVE`` plus dask config ``metadask.worker-env``
    plus ``env``. Pure: no cluster is contacted.
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
    worker_env = {"OMP_WAIT_POLICY": "PASSIVE", **{str(k): str(v) for k, v in (setting("worker-env") or {}).items()},
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
def _kubernetes_client(
    *, image: str | None, n_workers: int | None, worker_memory: str | int | None, namespace: str | None,
    threads_per_worker: int | None, connect_timeout: float,
) -> Iterator[Client]:
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


# -- connect --------------------------------------------------------------------------------
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
                         else _config("worker-wait-timeout", _DEFAULT_WORKER_WAIT))

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
            c = stack.enter_context(_connect_remote(str(address), timeout))
            log.info("Connected to scheduler %s", address)
            wait_for = min_workers or 1  # no workers at all would make every computation wait forever
        elif cluster == "kubernetes":
            ignore_sizing("--cluster kubernetes (use --k8s-workers, --k8s-worker-memory)", "threads_per_worker")
            c = stack.enter_context(_kubernetes_client(
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
                local = stack.enter_context(LocalCluster(**kwargs))
                c = stack.enter_context(Client(local))
                log.info("Started a local cluster: %d workers x %d threads, dashboard %s",
                         kwargs["n_workers"], kwargs["threads_per_worker"], c.dashboard_link)
        if wait_for:
            wait_for_workers(c, wait_for, wait_timeout)
        if check_versions:
            check_workers(c)
        if performance_report is not None:
            stack.enter_context(collect_performance_report(c, performance_report))
        yield c
