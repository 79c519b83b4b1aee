"""Out of core: the batch ensemble trains data >= 4x the workers' memory without pausing or killing them.

Slow (tens of minutes: the dataset alone takes minutes to generate). Runs
``benchmarks/out_of_core.py``; sizes can be lowered with ``METADASK_OOC_GENES`` and
``METADASK_OOC_MEMORY`` (e.g. 2000 genes on 2 x 1GB workers keeps the 4x ratio).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_batch_ensemble_trains_data_four_times_the_worker_memory():
    from benchmarks.out_of_core import run

    genes = int(os.environ.get("METADASK_OOC_GENES", "5000"))
    memory = os.environ.get("METADASK_OOC_MEMORY", "2GB")
    r = run(genes=genes, kmers=(3, 5), workers=2, memory_limit=memory, n_estimators=30, n_folds=3)
    failed = [k for k, ok in r["checks"].items() if not ok]
    assert not failed, f"out-of-core checks failed: {failed}; figures: {r}"
    assert r["matrix_to_memory_ratio"] >= 4.0
    assert r["meta_binary_f1"] > r["base_binary_f1"]


def test_out_of_core_benchmark_smoke_run():
    """The benchmark's --tiny mode runs end to end (and its checks pass on small workers)."""
    from benchmarks.out_of_core import main

    r = main(["--tiny"])
    assert r["strategy"] in ("single", "batch-ensemble")
    assert r["checks"]["no worker killed or restarted"] and r["checks"]["peak worker memory under the limit"]
