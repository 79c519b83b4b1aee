"""Interrupt and resume: ``metadask train`` killed mid-run (SIGINT, SIGKILL), then ``--resume``.

Each test runs the real command line in a subprocess, waits until fits are journaled (one
before SIGINT, four before SIGKILL), and signals it. The journal must hold only complete entries whose checksums
verify; ``--resume`` must reuse every one of them (the log names each), train only the
missing fits, reuse the cached gene index, and end with out-of-fold predictions and model
boosters identical, bit for bit, to an uninterrupted run. A killed ``--overwrite`` run must
leave the previous run's model loadable and unchanged, in a directory marked incomplete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from distributed import LocalCluster

import metadask

METADASK = str(Path(sys.executable).with_name("metadask"))
FLAGS = ["--n-folds", "3", "--n-estimators", "20", "--seed", "5", "--no-analysis", "--strategy", "single"]
CV_KEYS = {f"cv-f{f}-{c}" for f in range(3) for c in ("neither", "donor", "acceptor")}
ALL_KEYS = CV_KEYS | {f"final-{c}" for c in ("neither", "donor", "acceptor")}
PROBS = ["prob_neither", "prob_donor", "prob_acceptor", "margin_neither", "margin_donor", "margin_acceptor"]
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from metadask.testing import make_dataset

    out = tmp_path_factory.mktemp("resumedata") / "ds"
    make_dataset(out, 20, seed=3, genes_per_file=5, kmer_sizes=(1,))
    return out


@pytest.fixture(scope="module")
def scheduler() -> str:
    """A cluster the runs connect to (``--scheduler``) when they do not start their own."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      env={"OMP_WAIT_POLICY": "PASSIVE"}) as cluster:
        yield cluster.scheduler_address


def _start(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [METADASK, "train", "--dataset", str(data), "--out-dir", str(out), *FLAGS, *extra]
    # a session of its own: a signal to the process group reaches the run and its local cluster
    # only, as Ctrl-C at a terminal reaches the foreground job
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)


def _run(data: Path, out: Path, *extra: str, timeout: float = 400) -> str:
    proc = _start(data, out, *extra)
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr[-3000:]
    return stderr


@pytest.fixture(scope="module")
def reference(data: Path, scheduler: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    _run(data, out, "--scheduler", scheduler)
    return out


def _journal(out: Path) -> dict[str, bool]:
    """Journal key -> whether its booster matches the checksum recorded with it."""
    entries = {}
    for meta in (out / "journal").glob("*.json"):
        m = json.loads(meta.read_text())
        ubj = meta.with_suffix(".ubj")
        entries[meta.stem] = ubj.is_file() and hashlib.sha256(ubj.read_bytes()).hexdigest() == m["sha256"]
    return entries


def _interrupt_after(proc: subprocess.Popen, out: Path, sig: int, fits: int = 1, timeout: float = 300) -> list[int]:
    """Send ``sig`` once ``fits`` fits are journaled; return the pids of the run's child processes."""
    t0 = time.monotonic()
    while len(list(out.glob("journal/*.json"))) < fits:
        assert proc.poll() is None, f"the run ended before any fit was journaled: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() - t0 < timeout, "no fit was journaled in time"
        time.sleep(0.05)
    children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # Ctrl-C: the whole foreground job
    else:
        proc.send_signal(sig)  # the client process dies alone
    return children


def _assert_children_exit(pids: list[int], timeout: float = 90) -> None:
    """The run's local cluster (Nanny and worker processes) must not outlive it."""
    t0 = time.monotonic()
    alive = pids
    while alive and time.monotonic() - t0 < timeout:
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.5)
    for p in alive:  # clean up what this test started before failing
        os.kill(p, signal.SIGKILL)
    assert not alive, f"processes of the interrupted run still alive after {timeout} s: {alive}"


def _assert_identical(a: Path, b: Path) -> None:
    oa, ob = pd.read_parquet(a / "oof_predictions.parquet"), pd.read_parquet(b / "oof_predictions.parquet")
    pd.testing.assert_frame_equal(oa[["gene", "position", "fold", *PROBS]], ob[["gene", "position", "fold", *PROBS]],
                                  check_exact=True)
    metadask.load_model(b / "model")  # verifies every checksum
    files = [json.loads((d / "model" / "manifest.json").read_text())["files"] for d in (a, b)]
    assert files[0] == files[1]
    for name in files[0]:
        assert (a / "model" / name).read_bytes() == (b / "model" / name).read_bytes()


def _assert_resumed(log: str, journaled: set[str]) -> None:
    reused = set(re.findall(r"(?:CV|final) fit (\S+): reused from the journal", log))
    trained = set(re.findall(r"\[\d+/\d+\] (?:CV|final) fit (\S+) \(", log))
    print(f"\nresume: reused {len(reused)} fits ({', '.join(sorted(reused))}), trained {len(trained)}")
    assert reused == journaled, (reused, journaled)
    assert trained == ALL_KEYS - journaled, trained
    assert re.search(rf"--resume reused {len(journaled)} finished fits", log)
    assert "Reusing gene index" in log


@pytest.mark.parametrize(("how", "after"), [("SIGINT", 1), ("SIGKILL", 4)])
def test_an_interrupted_run_resumes_from_its_journal_to_identical_results(
        how: str, after: int, data: Path, scheduler: str, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # SIGINT: the default local cluster, as a user at a terminal would run it (and press Ctrl-C);
    # SIGKILL: a run on a shared cluster whose client process dies
    cluster = ("--n-workers", "2", "--threads-per-worker", "1") if how == "SIGINT" else ("--scheduler", scheduler)
    proc = _start(data, out, *cluster)
    children = _interrupt_after(proc, out, getattr(signal, how), after)
    _, stderr = proc.communicate(timeout=180)

    if how == "SIGINT":
        assert proc.returncode == 130, stderr[-3000:]
        assert stderr.strip().splitlines()[-1] == \
            "metadask: interrupted; finished pieces are kept (rerun with --resume)."
        # no traceback from metadask itself (Dask's worker processes may print their own
        # KeyboardInterrupt tracebacks when Ctrl-C reaches them; see docs/reliability.md)
        assert not re.search(r'File ".*/metadask/', stderr), stderr[-3000:]
    else:
        assert proc.returncode == -signal.SIGKILL
    _assert_children_exit(children)
    journal = _journal(out)
    assert len(journal) >= after and all(journal.values()), journal  # finished entries, checksums valid
    assert set(journal) < ALL_KEYS  # interrupted mid-run: fits were missing
    assert (out / "RUN_INCOMPLETE").is_file() and not (out / "model").exists()
    assert (out / "cache" / "gene_index.parquet").is_file()

    log = _run(data, out, "--resume", "--scheduler", scheduler)

    _assert_resumed(log, set(journal))
    assert not (out / "RUN_INCOMPLETE").exists()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    _assert_identical(reference, out)


def test_a_killed_overwrite_run_leaves_the_previous_model_loadable_and_unchanged(
        data: Path, scheduler: str, reference: Path, tmp_path: Path) -> None:
    # the earlier run's journal is left out so that a journaled fit proves this run got going
    out = Path(shutil.copytree(reference, tmp_path / "run", ignore=shutil.ignore_patterns("journal")))
    before = {p.relative_to(out): p.read_bytes() for p in (out / "model").rglob("*") if p.is_file()}
    oof_before = (out / "oof_predictions.parquet").read_bytes()

    proc = _start(data, out, "--overwrite", "--scheduler", scheduler)
    _interrupt_after(proc, out, signal.SIGKILL)
    proc.communicate(timeout=180)

    assert proc.returncode == -signal.SIGKILL
    assert (out / "RUN_INCOMPLETE").is_file()  # clearly marked: this run did not finish
    after = {p.relative_to(out): p.read_bytes() for p in (out / "model").rglob("*") if p.is_file()}
    assert after == before
    assert (out / "oof_predictions.parquet").read_bytes() == oof_before
    rows = pd.read_parquet(next((data / "master").glob("*.parquet")))
    np.testing.assert_array_equal(metadask.load_model(out / "model").predict_proba(rows),
                                  metadask.load_model(reference / "model").predict_proba(rows))
