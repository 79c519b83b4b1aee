"""Workers' memory during training: the plan's concurrency rule, refused workers, out-of-memory errors.

Real ``LocalCluster`` workers (Nanny processes with memory limits), no mocks: the plan limits
concurrent fits with a Dask worker resource, a worker too small to start is refused, and a
worker forced over its memory ends the run with one line and exit status 2, after which
``--resume`` finishes the run.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from distributed import Client, LocalCluster, get_task_stream

import metadask
from metadask.cluster import workers_info
from metadask.models.threads import FIT_RESOURCE
from metadask.strategies.capacity import task_name

MiB = 2**20


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 genes (3-mers, ~34k rows x ~140 features): one fit's estimate is ~64 MiB above the worker process."""
    from metadask.testing import make_dataset

    out = tmp_path_factory.mktemp("capacity") / "d40"
    make_dataset(out, 40, seed=7, genes_per_file=10)
    return out


class StatusLog:
    """Polls the scheduler for worker states while a run trains: paused workers, restarted (new) workers."""

    def __init__(self, client: Client):
        self.client, self.seen, self.paused = client, set(workers_info(client)), set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for address, info in workers_info(self.client).items():
                self.seen.add(address)
                if info.get("status") == "paused":
                    self.paused.add(address)
            time.sleep(0.2)

    def __enter__(self) -> StatusLog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _max_overlap(intervals: list[tuple[float, float]], slack: float = 0.05) -> int:
    """Most intervals running at once (each trimmed by ``slack`` s at its end: timestamps of back-to-back tasks touch)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e - slack, -1) for _, e in intervals])
    best = now = 0
    for _, d in events:
        now += d
        best = max(best, now)
    return best


def test_task_names_are_readable():
    assert task_name("metadask-fit-cv-f0-donor-0123456789ab") == "fit cv-f0-donor"
    assert task_name("metadask-oof-f1-140234567890123") == "out-of-fold prediction f1"


def test_a_four_thread_worker_that_cannot_hold_four_fits_runs_one_at_a_time_with_four_threads_and_never_pauses(
        data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    # 700 MiB: one fit (~406 MiB estimated) fits the 60 % task budget, so the old plan ran four at once
    # (~600 MiB by the same estimate, past the 560 MiB pause threshold)
    with LocalCluster(n_workers=1, threads_per_worker=4, memory_limit="700MiB", processes=True, dashboard_address=":0",
                      env={"OMP_WAIT_POLICY": "PASSIVE"}) as cluster, Client(cluster) as client:
        caplog.set_level(logging.INFO, logger="metadask")
        with StatusLog(client) as status, get_task_stream(client) as stream:
            result = metadask.train(data / "master", tmp_path / "out", client=client, n_folds=2, n_estimators=5,
                                    strategy="auto", analysis=False, seed=3)
        slots = {a: (i.get("resources") or {}).get(FIT_RESOURCE) for a, i in workers_info(client).items()}
    assert result.strategy == "single"
    assert "Concurrency: 1 concurrent fit per worker instead of 4 (one per thread)" in caplog.text
    assert list(slots.values()) == [1]
    assert set(result.fits["nthread"]) == {4}  # the one fit at a time uses every thread
    fits = [(s["start"], s["stop"]) for t in stream.data if str(t["key"]).startswith(("metadask-fit", "metadask-oof"))
            for s in t["startstops"] if s["action"] == "compute"]
    assert fits and _max_overlap(fits) == 1
    assert not status.paused, f"paused: {status.paused}"
    assert len(status.seen) == 1, f"a worker was restarted: {status.seen}"
    assert result.fits["peak_rss"].max() < 0.8 * 700 * MiB
