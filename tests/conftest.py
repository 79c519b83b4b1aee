"""Shared fixtures: one real LocalCluster per session and small synthetic datasets."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# benchmark smoke runs (in process or as subprocesses) write their JSON here, never into the
# working tree's benchmarks/results, whose files the docs quote
os.environ.setdefault("METADASK_BENCH_RESULTS", tempfile.mkdtemp(prefix="metadask-test-bench-results-"))


@pytest.fixture(scope="session")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", processes=True,
                      env={"OMP_WAIT_POLICY": "PASSIVE"}) as c:
        yield c


@pytest.fixture
def client(cluster):
    """A client on the session cluster (a fresh client per test, same workers)."""
    from distributed import Client

    with Client(cluster, set_as_default=True) as c:
        yield c


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """40 synthetic genes (3-mers) in 4 files, with k-mer drift."""
    from metadask.testing import make_dataset

    out = tmp_path_factory.mktemp("data") / "tiny"
    make_dataset(out, 40, seed=7, genes_per_file=10)
    return out


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """80 synthetic genes (3-mers) in 4 files, with k-mer drift."""
    from metadask.testing import make_dataset

    out = tmp_path_factory.mktemp("data") / "small"
    make_dataset(out, 80, seed=11, genes_per_file=20)
    return out


@pytest.fixture(scope="session")
def real_fly_3mer():
    from metadask.testing import real_data_path

    path = real_data_path("real_fly_3mer")
    if path is None:
        pytest.skip("real fly dataset not found (expected ../shared/data/real_fly_3mer or METADASK_REAL_DATA)")
    return path
