"""connect(): scheduler precedence, local clusters, timeouts, worker checks, performance report.

Real Dask throughout: the session LocalCluster (``client`` / ``cluster`` fixtures), a small
LocalCluster of our own, and loopback sockets for schedulers that are absent or silent.
Subprocess ``dask scheduler`` / ``dask worker`` clusters are in test_remote.py.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import dask
import dask.config
import pytest
from distributed import Client

import metadask
from metadask.cluster import check_workers, client_versions, connect, describe, worker_problem, worker_probe, workers_info
from metadask.config import env_scheduler_address
from metadask.errors import ClusterError, ConfigError


@pytest.fixture
def closed_port_address():
    """An address on loopback where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


@pytest.fixture
def silent_listener():
    """An address that accepts TCP connections and never says a word (a wrong service, a dead port-forward)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"tcp://127.0.0.1:{s.getsockname()[1]}"


# -- where the scheduler address comes from ----------------------------------------------------
def test_dask_scheduler_address_beats_dask_config(monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://from-env:8786")
    with dask.config.set({"scheduler-address": "tcp://from-config:8786"}):
        assert env_scheduler_address() == "tcp://from-env:8786"


def test_dask_config_scheduler_address_is_used_without_the_environment_variable(monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "  ")
    with dask.config.set({"scheduler-address": "tcp://from-config:8786"}):
        assert env_scheduler_address() == "tcp://from-config:8786"
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
    with dask.config.set({"scheduler_address": "tcp://underscore-spelling:8786"}):
        assert env_scheduler_address() == "tcp://underscore-spelling:8786"
    with dask.config.set({"scheduler-address": None}):
        assert env_scheduler_address() is None


def test_connect_uses_the_dask_config_scheduler_address(cluster, monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with dask.config.set({"scheduler-address": cluster.scheduler_address}):
        with connect(connect_timeout=10) as c:
            assert c.scheduler.address == cluster.scheduler_address
            assert describe(c).n_workers == 2
    assert c.status == "closed"  # connect opened this client, so it closes it


def test_explicit_scheduler_beats_environment_and_config(cluster, monkeypatch, closed_port_address):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", closed_port_address)
    with dask.config.set({"scheduler-address": closed_port_address}):
        with connect(scheduler=cluster.scheduler_address, connect_timeout=10) as c:
            assert c.scheduler.address == cluster.scheduler_address


def test_an_explicit_client_is_used_and_left_open(client):
    with connect(client=client) as c:
        assert c is client
    assert client.status == "running"


def test_an_active_default_client_is_used(client, monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with connect() as c:
        assert c is client
    assert client.status == "running"


def test_cluster_local_starts_its_own_local_cluster_and_shuts_it_down(client):
    with connect(cluster="local", n_workers=1, threads_per_worker=1, memory_limit="1GiB", min_workers=1) as c:
        assert c is not client
        spec = describe(c)
        assert (spec.n_workers, spec.threads, spec.memory_limits) == (1, (1,), (2**30,))
        local_address = c.scheduler.address
    assert c.status == "closed"
    assert local_address != client.scheduler.address


# -- unreachable schedulers fail fast, naming the address -------------------------------------
def test_a_closed_port_fails_within_the_connect_timeout_naming_the_address(closed_port_address):
    start = time.monotonic()
    with pytest.raises(ClusterError, match=f"Cannot reach the Dask scheduler at {closed_port_address} within 2 s"):
        with connect(scheduler=closed_port_address, connect_timeout=2):
            pass
    assert time.monotonic() - start < 6


def test_a_port_that_never_answers_fails_within_the_connect_timeout(silent_listener):
    # distributed's own handshake read has no timeout: without the pre-flight this hangs forever
    start = time.monotonic()
    with pytest.raises(ClusterError, match=f"Cannot reach the Dask scheduler at {silent_listener} within 2 s"):
        with connect(scheduler=silent_listener, connect_timeout=2):
            pass
    assert time.monotonic() - start < 6


def test_a_malformed_address_says_what_an_address_looks_like():
    with pytest.raises(ClusterError, match="'foo://x' is not a Dask scheduler address.*tcp://host:8786"):
        with connect(scheduler="foo://x", connect_timeout=2):
            pass


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"min_workers": 0}, "'min_workers' option must be a positive integer"),
    ({"worker_wait_timeout": -1}, "'worker_wait_timeout' option must be a positive number"),
    ({"connect_timeout": 0}, "'connect_timeout' option must be a positive number"),
    ({"cluster": "yarn"}, "'cluster' option must be 'local' or 'kubernetes'"),
    ({"cluster": "local", "n_workers": 1, "min_workers": 2}, "'min_workers' option exceeds the local cluster's 1 workers"),
])
def test_bad_cluster_options_are_rejected_before_anything_starts(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        with connect(**kwargs):
            pass


# -- worker checks ------------------------------------------------------------------------------
def test_check_workers_reports_every_workers_versions(client):
    versions = check_workers(client)
    assert sorted(versions) == sorted(workers_info(client))
    for found in versions.values():
        assert found["metadask"] == metadask.__version__
        assert worker_problem(found, client_versions()) is None


@pytest.mark.parametrize(("found", "problem"), [
    ({"metadask": "0.1.7", "xgboost": "3.0.5"}, None),
    ({"metadask": "0.1.0+g1234.dirty", "xgboost": "3.9.0rc1"}, None),
    ({"metadask": "0.2.0", "xgboost": "3.2.0"}, "metadask 0.2.0 (client has 0.1.0)"),
    ({"metadask": "1.1.0", "xgboost": "3.2.0"}, "metadask 1.1.0 (client has 0.1.0)"),
    ({"metadask": "0.1.0", "xgboost": "2.1.4"}, "xgboost 2.1.4 (client has 3.2.0)"),
    ({"metadask": None, "metadask_error": "ModuleNotFoundError: No module named 'metadask'", "xgboost": None},
     "metadask missing (ModuleNotFoundError: No module named 'metadask'); xgboost missing (not importable)"),
])
def test_worker_compatibility_is_metadask_major_minor_and_xgboost_major(found, problem):
    assert worker_problem(found, {"metadask": "0.1.0", "xgboost": "3.2.0"}) == problem


def test_the_worker_probe_runs_where_metadask_cannot_be_imported(tmp_path):
    import cloudpickle

    (tmp_path / "probe.pkl").write_bytes(cloudpickle.dumps(worker_probe))
    code = (
        "import pickle, sys\n"
        "class NoMetadask:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'metadask':\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, NoMetadask())\n"
        f"print(pickle.load(open({str(tmp_path / 'probe.pkl')!r}, 'rb'))())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "'metadask': None" in out and "ModuleNotFoundError" in out and "'xgboost': '" in out


# -- performance report ---------------------------------------------------------------------------
def test_performance_report_is_written_for_the_run(client, tmp_path):
    report = tmp_path / "reports" / "run.html"
    with connect(client=client, performance_report=report) as c:
        assert c.submit(sum, [1, 2]).result() == 3
    text = report.read_text()
    assert text.lstrip().lower().startswith("<!doctype html") and "Dask Performance Report" in text


def test_performance_report_is_written_when_the_run_fails_without_hiding_the_error(client, tmp_path):
    report = tmp_path / "failed.html"
    with pytest.raises(ZeroDivisionError):
        with connect(client=client, performance_report=report) as c:
            c.submit(lambda: 1 / 0).result()
    assert report.stat().st_size > 0


def test_performance_report_works_with_a_client_that_is_not_the_default(cluster, client, tmp_path):
    report = tmp_path / "other.html"
    with Client(cluster, set_as_default=False) as other:
        with connect(client=other, performance_report=report):
            assert other.submit(sum, [1, 2]).result() == 3
    assert "Dask Performance Report" in report.read_text()


def test_local_sizing_options_given_with_a_remote_scheduler_are_reported_not_dropped(cluster, caplog):
    import logging

    logger = logging.getLogger("metadask.cluster")
    logger.addHandler(caplog.handler)  # the CLI's setup_logging stops propagation at "metadask"
    try:
        with connect(scheduler=cluster.scheduler_address, n_workers=8, memory_limit="2GB", connect_timeout=10) as c:
            assert describe(c).n_workers == 2
    finally:
        logger.removeHandler(caplog.handler)
    assert f"--n-workers, --memory-limit apply only to a local cluster; ignored with the scheduler at {cluster.scheduler_address}" in caplog.text


def test_workers_info_asks_the_scheduler_not_the_clients_cached_identity(client):
    """The client's periodic refresh stores an identity without workers; workers_info must not see it."""
    n = len(client.run(lambda: 1))
    for _ in range(50):
        client.sync(client._update_scheduler_info, n_workers=0)  # what the periodic refresh does
        assert len(workers_info(client)) == n
    assert describe(client).n_workers == n
