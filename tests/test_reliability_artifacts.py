"""Atomic artifacts: failing runs, a full disk and denied permissions never cost a user a model.

* A run that fails (here: a registered strategy that fails after screening, and a disk that
  fills up mid-run) leaves the previous run's model bundle loadable and predicting exactly
  as before, in a directory marked ``RUN_INCOMPLETE``, with no temporary files left behind.
* A full disk (a real, tiny tmpfs when ``mount`` is allowed; otherwise the error mapping of
  :mod:`metadask.io` on an ``OSError(ENOSPC)`` raised by the writer) and a denied permission
  (a real one: read-only folders; as root, whom file modes do not stop, the command runs
  without the capabilities that bypass them) give one clear error line and exit status 2.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import metadask
from metadask.cli import main
from metadask.errors import OutputError, TrainingError
from metadask.io import write_text
from metadask.strategies import registry
from metadask.strategies.single import SingleStrategy

METADASK = str(Path(sys.executable).with_name("metadask"))
OPTIONS = {"n_folds": 2, "n_estimators": 10, "seed": 5, "analysis": False, "strategy": "single"}


def _flags(scheduler: str) -> list[str]:
    return ["--n-folds", "2", "--n-estimators", "10", "--seed", "5", "--no-analysis", "--scheduler", scheduler]


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def _one_error_line(result) -> str:
    err = result.stderr
    assert result.exit_code == 2, (result.exit_code, err, result.exception)
    assert "Traceback" not in err + result.stdout
    errors = [line for line in err.splitlines() if line.startswith("metadask: error: ")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    return errors[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from metadask.testing import make_dataset

    out = tmp_path_factory.mktemp("artdata") / "ds"
    make_dataset(out, 12, seed=4, genes_per_file=6, kmer_sizes=(1,))
    return out


@pytest.fixture(scope="module")
def previous_run(data: Path, cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run: the results a later failing run must not cost the user."""
    from distributed import Client

    out = tmp_path_factory.mktemp("previous") / "run"
    with Client(cluster, set_as_default=False) as client:
        metadask.train(str(data), out, client=client, **OPTIONS)
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real bundle (three boosters trained in-process, no cluster)."""
    import xgboost as xgb

    from metadask.models.boosted import BoosterModel
    from metadask.models.bundle import save_model

    rng = np.random.default_rng(0)
    x = rng.random((200, 5)).astype(np.float32)
    boosters = [xgb.train({"nthread": 1}, xgb.DMatrix(x, label=rng.integers(0, 2, 200)), 5) for _ in range(3)]
    out = tmp_path_factory.mktemp("bundle") / "model"
    save_model(BoosterModel(boosters, [f"f{i}" for i in range(5)]), out, strategy="single")
    return out


def _assert_bundle_intact(path: Path, reference: Path) -> None:
    assert _files(path) == _files(reference)
    rows = pd.DataFrame(np.random.default_rng(1).random((50, 5)), columns=[f"f{i}" for i in range(5)])
    np.testing.assert_array_equal(metadask.load_model(path).predict_proba(rows),
                                  metadask.load_model(reference).predict_proba(rows))


def _assert_previous_model_intact(out: Path, previous: Path, data: Path) -> None:
    model_files = {k: v for k, v in _files(out).items() if k.startswith("model/")}
    assert model_files == {k: v for k, v in _files(previous).items() if k.startswith("model/")}
    rows = pd.read_parquet(next((data / "master").glob("*.parquet")))
    np.testing.assert_array_equal(metadask.load_model(out / "model").predict_proba(rows),
                                  metadask.load_model(previous / "model").predict_proba(rows))


# -- a failing run --------------------------------------------------------------------------


class _FailsAfterScreening(SingleStrategy):
    """Injected fault: the strategy fails once the index and screening are done."""

    name = "fails-after-screening"

    def fit(self, ctx):
        assert (Path(ctx.journal.root).parent / "screening").is_dir()
        raise TrainingError("Injected failure after screening (test strategy).")


def test_a_failing_overwrite_run_leaves_the_previous_model_loadable_and_marks_the_run_incomplete(
        data: Path, previous_run: Path, cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._REGISTERED, _FailsAfterScreening.name, _FailsAfterScreening)
    out = Path(shutil.copytree(previous_run, tmp_path / "run"))

    result = CliRunner().invoke(main, ["train", "--dataset", str(data), "--out-dir", str(out), "--overwrite",
                                       "--strategy", _FailsAfterScreening.name, *_flags(cluster.scheduler_address)])

    assert "Injected failure after screening" in _one_error_line(result)
    assert (out / "RUN_INCOMPLETE").is_file()
    _assert_previous_model_intact(out, previous_run, data)
    assert not _temporaries(out)


# -- disk full -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message"),
    [(errno.ENOSPC, r"No space left on the device while writing '.*a\.txt'\. Free disk space"),
     (errno.EDQUOT, r"No space left on the device"),
     (errno.EACCES, r"Permission denied writing '.*a\.txt'\. Choose a writable --out-dir"),
     (errno.EROFS, r"Permission denied writing"),
     (errno.EIO, r"Cannot write '.*a\.txt': Input/output error\. Check --out-dir")],
)
def test_a_failing_write_becomes_a_clear_error_and_keeps_the_previous_file(tmp_path: Path, code: int,
                                                                            message: str) -> None:
    from metadask.io import atomic_write

    target = write_text(tmp_path / "a.txt", "previous\n")

    def writer(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write("half of the new cont")
        raise OSError(code, os.strerror(code), tmp)

    with pytest.raises(OutputError, match=message):
        atomic_write(target, writer)
    assert target.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


@pytest.fixture
def tiny_disk() -> Iterator[Path]:
    """A real 2 MiB tmpfs (skipped where mounting is not allowed)."""
    root = Path(tempfile.mkdtemp(prefix="metadask-tinydisk-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(root)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        root.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip() or 'mount failed'}); "
                    "the ENOSPC mapping is tested by test_a_failing_write_becomes_a_clear_error_and_keeps_the_previous_file")
    try:
        yield root
    finally:
        subprocess.run(["umount", str(root)], check=False)
        root.rmdir()


def _fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` until about ``leave`` bytes are free."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


def test_save_model_on_a_full_disk_fails_clearly_and_keeps_the_previous_bundle(tiny_disk: Path, bundle: Path) -> None:
    from metadask.models.bundle import save_model

    shutil.copytree(bundle, tiny_disk / "model")
    new = metadask.load_model(bundle)
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    _fill(tiny_disk, size // 2)  # room for half a bundle

    with pytest.raises(OutputError, match=r"No space left on the device while writing '.*model'"):
        save_model(new, tiny_disk / "model", strategy="single")

    assert not _temporaries(tiny_disk)
    _assert_bundle_intact(tiny_disk / "model", bundle)


def test_a_run_that_fills_the_disk_fails_clearly_and_keeps_the_previous_model(
        tiny_disk: Path, previous_run: Path, data: Path, cluster) -> None:
    out = Path(shutil.copytree(previous_run, tiny_disk / "run", ignore=shutil.ignore_patterns("journal")))
    _fill(tiny_disk, 96 * 1024)  # the gene index and screening fit; the fits' journal does not

    result = CliRunner().invoke(main, ["train", "--dataset", str(data), "--out-dir", str(out), "--overwrite",
                                       "--strategy", "single", *_flags(cluster.scheduler_address)])

    assert "No space left on the device while writing" in _one_error_line(result)
    assert (out / "RUN_INCOMPLETE").is_file()
    assert not _temporaries(out)
    _assert_previous_model_intact(out, previous_run, data)


# -- permission denied ----------------------------------------------------------------------------


def _run_unprivileged(args: list[str]) -> tuple[int, str]:
    """Run the CLI where file modes apply. Root ignores them, so as root the command runs
    without the capabilities that bypass them (``setpriv``: no CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH, CAP_FOWNER)."""
    if os.geteuid() != 0:
        result = CliRunner().invoke(main, args)
        return result.exit_code, result.stderr
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("tests run as root and setpriv is missing: file permissions cannot be enforced here")
    cmd = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--inh-caps=-all", "--", METADASK, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("where", ["a new out-dir in a read-only folder", "an existing read-only run with --overwrite"])
def test_permission_denied_is_one_clear_line_and_changes_nothing(where: str, tmp_path: Path, data: Path,
                                                                 bundle: Path) -> None:
    locked = tmp_path / "locked"
    if where.startswith("a new"):
        locked.mkdir()
        out, extra = locked / "run", []
    else:  # an earlier run: its model, summary and journal
        out = locked
        shutil.copytree(bundle, out / "model")
        (out / "training_summary.txt").write_text("an earlier run\n")
        (out / "journal").mkdir()
        (out / "journal" / "cv-f0-donor.json").write_text("{}")
        extra = ["--overwrite"]
    for p in [locked, *locked.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    before = _files(locked)
    try:
        code, err = _run_unprivileged(["train", "--dataset", str(data), "--out-dir", str(out), "--n-folds", "2",
                                       "--no-analysis", *extra])
    finally:
        for p in [locked, *locked.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)

    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("metadask: error: Permission denied") and str(out) in last, err
    assert "Choose a writable --out-dir" in last
    assert _files(locked) == before
