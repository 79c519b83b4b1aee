"""Reliability on the cluster: a worker killed mid-run, and bitwise determinism.

A worker process of a Nanny-managed ``LocalCluster`` is killed with SIGKILL while it runs a
fit (after at least one fit has finished and been journaled). The Nanny starts a new worker;
the scheduler reruns the lost task and recomputes results that lived only on the dead
worker. The run must complete with out-of-fold predictions and model boosters identical,
bit for bit, to a run without the fault. The same runs give the determinism checks: same
seed, same models and predictions across runs and across 1 vs 2 workers.

The ``distributed`` strategy (xgboost.dask) is not covered here: a lost worker there must end
the run with a clear error (tests/test_distributed.py), and it does not promise bitwise
determinism (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

import metadask
from metadask.cluster import workers_info

STRATEGIES = ["single", "batch-ensemble"]
OPTIONS = {
    "single": {"n_folds": 2, "n_estimators": 10, "seed": 5, "analysis": False},
    # 20 genes, <= 10 per batch: two members, leave-batch-out CV (6 member fits)
    "batch-ensemble": {"n_folds": 2, "n_estimators": 10, "seed": 5, "analysis": False, "max_genes_per_batch": 10},
}
N_FITS = {"single": 2 * 3 + 3, "batch-ensemble": 2 * 3}
PROBS = ["prob_neither", "prob_donor", "prob_acceptor", "margin_neither", "margin_donor", "margin_acceptor"]


def _new_cluster(n_workers: int) -> LocalCluster:
    # processes=True: every worker is a separate process managed by a Nanny (restarted on death)
    return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                        env={"OMP_WAIT_POLICY": "PASSIVE"})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 genes in 4 files, 1-mers only (~70 features): fits take seconds even on a busy machine."""
    from metadask.testing import make_dataset

    out = tmp_path_factory.mktemp("faultdata") / "ds"
    make_dataset(out, 20, seed=3, genes_per_file=5, kmer_sizes=(1,))
    return out


@pytest.fixture(scope="module")
def nanny_client():
    # A LocalCluster forgets a worker whose Nanny has not brought it back within
    # lost-worker-timeout (15 s); on a loaded machine a restart can take longer.
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "300s"}):
        with _new_cluster(2) as cluster, Client(cluster, set_as_default=False) as client:
            yield client


@pytest.fixture(scope="module")
def references(data: Path, nanny_client: Client, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Fault-free runs on the 2-worker cluster, one per strategy, trained on first use."""
    cache: dict[str, tuple[object, Path]] = {}

    def get(strategy: str):
        if strategy not in cache:
            out = tmp_path_factory.mktemp("ref") / strategy
            result = metadask.train(str(data), out, client=nanny_client, strategy=strategy, **OPTIONS[strategy])
            cache[strategy] = (result, out)
        return cache[strategy]

    return get  # type: ignore[return-value]


def _bundle_checksums(out: Path) -> dict[str, str]:
    """SHA-256 of every model file (boosters, model.json) as recorded and verified on load."""
    metadask.load_model(out / "model")  # verifies every checksum
    return json.loads((out / "model" / "manifest.json").read_text())["files"]


def _assert_identical(a: Path, b: Path) -> None:
    oa, ob = pd.read_parquet(a / "oof_predictions.parquet"), pd.read_parquet(b / "oof_predictions.parquet")
    pd.testing.assert_frame_equal(oa[["gene", "position", "fold", *PROBS]], ob[["gene", "position", "fold", *PROBS]],
                                  check_exact=True)
    assert _bundle_checksums(a) == _bundle_checksums(b)


class WorkerKiller(threading.Thread):
    """Kill (SIGKILL) a worker that is running a fit, once ``journal`` holds a finished fit."""

    def __init__(self, client: Client, journal: Path, timeout: float = 300):
        super().__init__(daemon=True)
        self.client, self.journal, self.timeout = client, journal, timeout
        self.killed: dict[str, object] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set() and time.monotonic() - t0 < self.timeout:
            done = len(list(self.journal.glob("*.json"))) if self.journal.is_dir() else 0
            if done >= 1:
                busy = [addr for addr, keys in self.client.processing().items()
                        if any(str(k).startswith("metadask-fit-") for k in keys)]
                if busy:
                    pids = self.client.run(os.getpid, workers=[busy[0]])
                    pid = pids[busy[0]]
                    os.kill(pid, signal.SIGKILL)
                    self.killed = {"address": busy[0], "pid": pid, "journal_entries": done,
                                   "running": self.client.processing()[busy[0]]}
                    return
            time.sleep(0.05)


def _wait_for_workers(client: Client, n: int, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while len(workers_info(client)) < n:
        assert time.monotonic() - t0 < timeout, "the Nanny did not restart the killed worker"
        time.sleep(0.2)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_run_survives_a_killed_worker_and_predicts_exactly_what_a_fault_free_run_does(
        strategy: str, data: Path, nanny_client: Client, references, tmp_path: Path) -> None:
    _, ref_out = references(strategy)
    _wait_for_workers(nanny_client, 2)
    out = tmp_path / "faulted"
    before = set(workers_info(nanny_client))
    killer = WorkerKiller(nanny_client, out / "journal")
    killer.start()
    try:
        result = metadask.train(str(data), out, client=nanny_client, strategy=strategy, **OPTIONS[strategy])
    finally:
        killer.stop.set()
        killer.join()

    # the fault really happened mid-run: a fit was running and fits were still missing
    assert killer.killed, "no worker was killed: the run finished before any fit was running"
    print(f"\n{strategy}: killed worker pid {killer.killed['pid']} running {killer.killed['running']} with "
          f"{killer.killed['journal_entries']} of {N_FITS[strategy]} fits journaled")
    assert killer.killed["journal_entries"] < N_FITS[strategy]
    assert any(str(k).startswith("metadask-fit-") for k in killer.killed["running"])
    assert killer.killed["address"] not in workers_info(nanny_client)
    with pytest.raises(ProcessLookupError):
        os.kill(int(killer.killed["pid"]), 0)
    _wait_for_workers(nanny_client, 2)
    assert set(workers_info(nanny_client)) != before  # a new worker replaced it

    # ... and changed nothing
    assert not (out / "RUN_INCOMPLETE").exists()
    assert len(list((out / "journal").glob("*.json"))) == N_FITS[strategy]
    _assert_identical(ref_out, out)
    assert result.oof[PROBS].notna().all().all()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_same_seed_gives_bitwise_identical_models_and_predictions_on_one_and_two_workers(
        strategy: str, data: Path, references, tmp_path: Path) -> None:
    ref_result, ref_out = references(strategy)
    with _new_cluster(1) as one, Client(one, set_as_default=False) as c1:
        result = metadask.train(str(data), tmp_path / "one", client=c1, strategy=strategy, **OPTIONS[strategy])
    _assert_identical(ref_out, tmp_path / "one")
    assert result.folds.equals(ref_result.folds)
    # the reloaded bundles predict the same on new rows too
    rows = pd.read_parquet(next((data / "master").glob("*.parquet")))
    a = metadask.load_model(ref_out / "model").predict_proba(rows)
    b = metadask.load_model(tmp_path / "one" / "model").predict_proba(rows)
    np.testing.assert_array_equal(a, b)


def test_a_different_seed_gives_different_models(data: Path, nanny_client: Client, references, tmp_path: Path) -> None:
    """The determinism checks can fail: the seed really reaches the fits."""
    strategy = "single"
    _, ref_out = references(strategy)
    _wait_for_workers(nanny_client, 2)
    metadask.train(str(data), tmp_path / "other", client=nanny_client, strategy=strategy,
                   **{**OPTIONS[strategy], "seed": 6})
    assert _bundle_checksums(ref_out) != _bundle_checksums(tmp_path / "other")
