"""``--resume`` fingerprints the data: values rewritten in place are refitted, and the log says why.

The journal stores the dataset fingerprint (per file: size, modification time / ETag,
parquet footer statistics) and every fit's digest covers the fingerprints of the files it
reads. These tests rewrite a file's values in place, even restoring its modification time,
and check that ``--resume`` neither trusts the stale fits nor refits what did not change.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metadask.dataset import open_dataset
from metadask.training import train

OPTS = {"n_folds": 2, "n_estimators": 8, "seed": 3, "analysis": False, "strategy": "single"}
PROBS = ["margin_neither", "margin_donor", "margin_acceptor", "prob_neither", "prob_donor", "prob_acceptor"]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    from metadask.testing import make_dataset

    return make_dataset(tmp_path / "ds", 16, seed=3, genes_per_file=4, kmer_sizes=(1,))


def rewrite_in_place(file: Path, column: str = "donor_score") -> None:
    """New values for ``column`` in ``file``, written over it; its modification time is kept."""
    stat = file.stat()
    frame = pd.read_parquet(file)
    frame[column] = np.sqrt(frame[column].to_numpy())
    frame.to_parquet(file, index=False)
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def oof(result) -> np.ndarray:
    return result.oof.sort_values(["gene", "position"], kind="stable")[PROBS].to_numpy()


def test_the_fingerprint_changes_when_values_are_rewritten_with_the_same_modification_time(data):
    dataset = open_dataset(data)
    before = dataset.fingerprint()
    rewrite_in_place(Path(dataset.files[1]))
    after = open_dataset(data).fingerprint()
    assert [row[0] for row in after] == [row[0] for row in before]
    assert after[0] == before[0] and after[2:] == before[2:]
    assert after[1][2] == before[1][2]  # modification time kept: only the footer statistics tell
    assert after[1][3] != before[1][3]


def test_resume_refits_the_fits_that_read_a_file_rewritten_in_place_and_says_why(data, tmp_path, client, caplog):
    out = tmp_path / "run"
    first = train(data, out, client=client, **OPTS)
    with caplog.at_level(logging.INFO, logger="metadask"):
        unchanged = train(data, out, client=client, resume=True, **OPTS)
    assert "changed since the journaled fits" not in caplog.text
    assert np.array_equal(oof(unchanged), oof(first))
    reused_all = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--resume reused")]
    assert reused_all and reused_all[-1].startswith("--resume reused 9 finished fits")  # 2 folds + final, 3 classes

    changed = Path(open_dataset(data).files[-1])
    rewrite_in_place(changed)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="metadask"):
        resumed = train(data, out, client=client, resume=True, **OPTS)
    warning = [r.getMessage() for r in caplog.records if "changed since the journaled fits" in r.getMessage()]
    assert len(warning) == 1 and changed.name in warning[0] and "parquet footer statistics changed" in warning[0]
    assert "modification time" not in warning[0]

    fresh = train(data, tmp_path / "fresh", client=client, **OPTS)
    assert not np.array_equal(oof(fresh), oof(first))  # the rewrite matters to the models
    assert np.array_equal(oof(resumed), oof(fresh))
    frame = open_dataset(data).read_genes(sorted(first.folds.index)[:4])
    assert np.array_equal(resumed.model.predict_proba(frame), fresh.model.predict_proba(frame))
