"""Soak: consecutive small trainings on one cluster leak nothing (5 in the default suite, 20 slow).

After three warm-up runs (imports, allocator pools, XGBoost's first-use caches) the workers'
resident memory may grow by less than ``RSS_BOUND`` over the remaining runs, and nothing
else may accumulate: the same worker processes (none lost or restarted), no tasks left on the
scheduler after a run, no more threads or open files in the client, no temporary files (the
cluster's and the client's temporary folder is private to this test) and no ``.tmp-`` files
in the output directories. The figures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import gc
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from distributed import Client, LocalCluster

import metadask

WARMUP = 3
RSS_BOUND = 150 * 2**20
OPTIONS = {"strategy": "single", "n_folds": 2, "n_estimators": 10, "seed": 1, "analysis": False}


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _scheduler_tasks(dask_scheduler=None) -> int:
    return len(dask_scheduler.tasks)


def _files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# the default suite soaks 5 runs (2 measured after the warm-up; ~50 s under load); the slow suite 20
@pytest.mark.parametrize("runs", [pytest.param(5, id="5-runs"), pytest.param(20, id="20-runs", marks=pytest.mark.slow)])
def test_consecutive_trainings_leak_no_memory_workers_threads_or_files(
        runs: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from metadask.testing import make_dataset

    data = make_dataset(tmp_path / "ds", 12, seed=2, genes_per_file=4, kmer_sizes=(1,)).parent
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    me = psutil.Process()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      local_directory=str(private_tmp), env={"OMP_WAIT_POLICY": "PASSIVE", "TMPDIR": str(private_tmp)}
                      ) as cluster, Client(cluster, set_as_default=False) as client:
        pids = client.run(os.getpid)
        rss: list[dict[str, int]] = []
        threads: list[int] = []
        worker_threads: list[int] = []
        fds: list[int] = []
        tmp_files: list[set[str]] = []
        seconds: list[float] = []
        for i in range(runs):
            t0 = time.perf_counter()
            out = tmp_path / "runs" / f"run{i:02d}"
            metadask.train(str(data), out, client=client, **OPTIONS)
            seconds.append(time.perf_counter() - t0)
            assert not [p for p in out.rglob("*") if ".tmp-" in p.name], f"temporary files left in {out}"
            gc.collect()
            t1 = time.monotonic()
            while client.run_on_scheduler(_scheduler_tasks) and time.monotonic() - t1 < 30:
                time.sleep(0.1)
            assert client.run_on_scheduler(_scheduler_tasks) == 0, f"run {i} left tasks on the scheduler"
            assert client.run(os.getpid) == pids, f"workers changed during run {i}"
            rss.append(client.run(_rss))
            threads.append(threading.active_count())
            worker_threads.append(max(client.run(threading.active_count).values()))
            fds.append(me.num_fds())
            tmp_files.append(_files_under(private_tmp))

    growth = {w: rss[-1][w] - rss[WARMUP - 1][w] for w in pids}
    mib = {w: round(g / 2**20, 1) for w, g in growth.items()}
    print(f"\nsoak: {runs} runs, {sum(seconds):.0f} s ({min(seconds):.1f}-{max(seconds):.1f} s per run)")
    print("soak: worker RSS MiB per run:", [round(max(r.values()) / 2**20) for r in rss])
    print(f"soak: worker RSS growth after warm-up (runs {WARMUP}..{runs}): {mib} MiB")
    print(f"soak: client threads {threads[0]} -> {threads[WARMUP - 1]} -> {threads[-1]}; worker threads "
          f"{worker_threads[0]} -> {worker_threads[-1]}; client fds {fds[0]} -> {fds[WARMUP - 1]} -> {fds[-1]}; "
          f"temporary files {len(tmp_files[WARMUP - 1])} -> {len(tmp_files[-1])}")

    assert max(growth.values()) < RSS_BOUND, mib
    assert threads[-1] <= threads[WARMUP - 1] + 2, threads
    assert worker_threads[-1] <= worker_threads[WARMUP - 1] + 2, worker_threads
    assert fds[-1] <= fds[WARMUP - 1] + 5, fds
    assert tmp_files[-1] <= tmp_files[WARMUP - 1], tmp_files[-1] - tmp_files[WARMUP - 1]
