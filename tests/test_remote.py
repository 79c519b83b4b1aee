"""A real remote cluster: ``dask scheduler`` and ``dask worker`` processes on loopback.

The scheduler listens on a random port (``--port 0``) and publishes its address in a
scheduler file, which the workers and the tests read. Workers run without a nanny (one
process each, ``--nthreads 1``, ``OMP_WAIT_POLICY=PASSIVE``) to keep the load on a shared
machine small, and with ``--death-timeout`` so none outlives a failed teardown for long.

A worker "without metadask" is a normal worker started with ``--preload`` of a small module
that puts a meta path finder in front of ``sys.meta_path`` raising ``ModuleNotFoundError``
for ``metadask`` (metadask is installed editable in the shared venv, so uninstalling it is
not an option); to the worker process metadask is then exactly as absent as in an image
that never installed it. A scheduler "without bokeh" is made the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from distributed import Client

from metadask.cluster import check_workers, connect, describe, workers_info
from metadask.errors import ClusterError

DASK = str(Path(sys.executable).with_name("dask"))

def blocking_preload(*names: str) -> str:
    """Source of a ``--preload`` module that makes ``names`` unimportable in that process."""
    return f'''\
"""dask --preload module: make this process behave as if {", ".join(names)} were not installed."""
import sys

BLOCKED = {names!r}


class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
for _name in [m for m in sys.modules if m.split(".")[0] in BLOCKED]:
    del sys.modules[_name]
'''


OLD_METADASK = '''\
"""dask worker --preload module: pretend this worker runs an old, incompatible metadask."""
import metadask

metadask.__version__ = "0.0.1"
'''


class DaskProcesses:
    """A ``dask scheduler`` plus ``dask worker`` subprocesses, torn down by :meth:`close`."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
        self.env["OMP_WAIT_POLICY"] = "PASSIVE"
        self.scheduler_file = root / "scheduler.json"
        self.address = ""

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([DASK, *args], stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root)
        log.close()
        self.procs.append((name, proc))
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {n}.log ---\n{(self.root / f'{n}.log').read_text(errors='replace')[-3000:]}" for n, _ in self.procs)

    def start_scheduler(self, *extra: str, timeout: float = 60) -> str:
        proc = self._spawn("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                         "--scheduler-file", str(self.scheduler_file), *extra])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"dask scheduler exited with {proc.returncode}\n{self.logs()}")
            if self.scheduler_file.exists():
                try:
                    self.address = json.loads(self.scheduler_file.read_text())["address"]
                    return self.address
                except (ValueError, KeyError):
                    pass  # being written
            time.sleep(0.1)
        raise RuntimeError(f"dask scheduler did not start within {timeout} s\n{self.logs()}")

    def add_worker(self, name: str, *extra: str) -> subprocess.Popen:
        return self._spawn(name, ["worker", "--scheduler-file", str(self.scheduler_file), "--name", name,
                                  "--nthreads", "1", "--no-nanny", "--no-dashboard", "--death-timeout", "60", *extra])

    def wait_for_workers(self, n: int, timeout: float = 90) -> None:
        with Client(self.address, timeout="30s", set_as_default=False) as c:
            try:
                c.wait_for_workers(n, timeout=timeout)
            except TimeoutError:
                raise RuntimeError(f"{n} workers did not connect within {timeout} s\n{self.logs()}") from None

    def close(self) -> None:
        """Stop the workers, then the scheduler (a worker stopping while the scheduler also
        stops waits for it 30 s): SIGTERM, wait, SIGKILL if still running."""
        workers = [p for n, p in self.procs if n != "scheduler"]
        schedulers = [p for n, p in self.procs if n == "scheduler"]
        for group in (workers, schedulers):
            for proc in group:
                if proc.poll() is None:
                    proc.terminate()
            for proc in group:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """Address of a running ``dask scheduler`` with two ``dask worker`` processes."""
    procs = DaskProcesses(tmp_path_factory.mktemp("remote-cluster"))
    try:
        procs.start_scheduler()
        procs.add_worker("worker-1")
        procs.add_worker("worker-2")
        procs.wait_for_workers(2)
        yield procs.address
    finally:
        procs.close()
    assert all(p.returncode is not None for _, p in procs.procs)


@pytest.fixture
def no_default_client():
    """Tests here must reach the remote scheduler, never a client left active by another test."""
    from distributed.client import _get_global_client

    assert _get_global_client() is None


@pytest.fixture
def closed_port_address():
    """An address on loopback where nothing listens."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def _worker_names(client: Client) -> list[str]:
    return sorted(w["name"] for w in workers_info(client).values())


def test_connect_with_scheduler_address_uses_the_remote_workers(remote, no_default_client):
    with connect(scheduler=remote, connect_timeout=10) as c:
        assert c.scheduler.address == remote
        assert _worker_names(c) == ["worker-1", "worker-2"]
        spec = describe(c)
        assert spec.n_workers == 2 and spec.threads == (1, 1)
        assert c.submit(sum, [1, 2, 3]).result() == 6
    assert c.status == "closed"


def test_connect_reads_dask_scheduler_address_from_the_environment(remote, no_default_client, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", remote)
    with connect(connect_timeout=10) as c:
        assert c.scheduler.address == remote


def test_explicit_scheduler_beats_dask_scheduler_address(remote, no_default_client, monkeypatch, closed_port_address):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", closed_port_address)
    with connect(scheduler=remote, connect_timeout=10) as c:
        assert c.scheduler.address == remote


def test_min_workers_reached_lets_the_run_start(remote, no_default_client):
    with connect(scheduler=remote, min_workers=2, worker_wait_timeout=5) as c:
        assert describe(c).n_workers == 2


def test_min_workers_not_reached_fails_naming_how_many_arrived(remote, no_default_client):
    start = time.monotonic()
    with pytest.raises(ClusterError, match=r"Only 2 of the 3 workers .*--min-workers.* within 1 s"):
        with connect(scheduler=remote, min_workers=3, worker_wait_timeout=1):
            pass
    assert time.monotonic() - start < 15


def test_check_workers_passes_on_workers_with_metadask(remote, no_default_client):
    import xgboost

    import metadask

    with Client(remote, set_as_default=False) as c:
        versions = check_workers(c)
    assert len(versions) == 2
    for found in versions.values():
        assert found["metadask"] == metadask.__version__ and found["xgboost"] == xgboost.__version__


def test_performance_report_of_a_remote_run_is_written(remote, no_default_client, tmp_path):
    report = tmp_path / "remote-report.html"
    with connect(scheduler=remote, performance_report=report) as c:
        assert sum(c.gather(c.map(abs, range(-5, 5)))) == 25
    assert "Dask Performance Report" in report.read_text()


@pytest.fixture(scope="module")
def broken_remote(tmp_path_factory):
    """A scheduler without bokeh, a worker without metadask and one with an old metadask."""
    root = tmp_path_factory.mktemp("broken-cluster")
    (root / "no_metadask.py").write_text(blocking_preload("metadask"))
    (root / "no_bokeh.py").write_text(blocking_preload("bokeh"))
    (root / "old_metadask.py").write_text(OLD_METADASK)
    procs = DaskProcesses(root / "procs")
    try:
        procs.start_scheduler("--preload", str(root / "no_bokeh.py"))
        procs.add_worker("no-metadask", "--preload", str(root / "no_metadask.py"))
        procs.add_worker("old-metadask", "--preload", str(root / "old_metadask.py"))
        procs.wait_for_workers(2)
        yield procs.address
    finally:
        procs.close()


def test_workers_without_metadask_or_at_another_version_give_a_clear_error(broken_remote, no_default_client):
    import metadask

    with pytest.raises(ClusterError) as info:
        with connect(scheduler=broken_remote, connect_timeout=10):
            pass
    message = str(info.value)
    assert "2 of 2 Dask workers cannot run metadask" in message
    assert "(no-metadask) [metadask missing (ModuleNotFoundError" in message
    assert f"(old-metadask) [metadask 0.0.1 (client has {metadask.__version__})]" in message
    assert f"Install metadask=={metadask.__version__}" in message and "worker image" in message


def test_performance_report_without_bokeh_on_the_scheduler_fails_before_the_run(broken_remote, no_default_client, tmp_path):
    with pytest.raises(ClusterError, match=r"--performance-report needs bokeh on the Dask scheduler .*pip install 'bokeh>=3.1'"):
        with connect(scheduler=broken_remote, connect_timeout=10, check_versions=False,
                     performance_report=tmp_path / "report.html"):
            raise AssertionError("the run must not start")
    assert not (tmp_path / "report.html").exists()


# -- end to end: metadask train / predict against the remote cluster ----------------------------------
@pytest.fixture(scope="module")
def remote_dataset(tmp_path_factory):
    from metadask.testing import make_dataset

    out = tmp_path_factory.mktemp("remote-data") / "tiny"
    make_dataset(out, 12, seed=3, genes_per_file=4, kmer_sizes=(1,))
    return out


@pytest.fixture(scope="module")
def remote_run(remote, remote_dataset, tmp_path_factory):
    from metadask.cli import main

    out_dir = tmp_path_factory.mktemp("remote-run") / "run"
    result = CliRunner().invoke(main, [
        "train", "--scheduler", remote, "--dataset", str(remote_dataset), "--out-dir", str(out_dir),
        "--n-folds", "2", "--n-estimators", "5", "--no-analysis",
    ])
    return result, out_dir


# training on the real `dask scheduler` / `dask worker` processes: ~20-35 s on a shared 2-core machine
def test_metadask_train_runs_on_the_remote_cluster(remote_run):
    result, out_dir = remote_run
    assert result.exit_code == 0, (result.output, result.exception)
    assert (out_dir / "model").is_dir()
    assert (out_dir / "oof_predictions.parquet").exists()


def test_metadask_predict_runs_on_the_remote_cluster(remote, remote_run, remote_dataset, tmp_path):
    import pandas as pd

    from metadask.cli import main

    train_result, out_dir = remote_run
    assert train_result.exit_code == 0, (train_result.output, train_result.exception)
    out = tmp_path / "predictions.parquet"
    result = CliRunner().invoke(main, ["predict", "--scheduler", remote, "--model", str(out_dir / "model"),
                                       "--dataset", str(remote_dataset), "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    preds = pd.read_parquet(out)
    assert len(preds) > 0 and f"Wrote {len(preds):,} predictions" in result.output
    # every row, with the probabilities the trained bundle gives locally
    import numpy as np

    import metadask

    rows = pd.concat([pd.read_parquet(f) for f in sorted((remote_dataset / "master").glob("*.parquet"))])
    probs = ["prob_neither", "prob_donor", "prob_acceptor"]
    merged = preds[["gene_id", "position", *probs]].merge(rows, on=["gene_id", "position"], validate="one_to_one")
    assert len(merged) == len(rows) == len(preds)
    np.testing.assert_allclose(merged[probs].to_numpy(), metadask.load_model(out_dir / "model").predict_proba(merged),
                               rtol=1e-6, atol=1e-9)
