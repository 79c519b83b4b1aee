"""The memory model and "auto": single when one fit fits a worker, batch ensemble otherwise."""

from __future__ import annotations

import json

import dask.config
import numpy as np
import pandas as pd
import pytest

from metadask.dataset.index import GeneIndex
from metadask.errors import TrainingError
from metadask.plan import (
    TASK_BASE_BYTES,
    choose_strategy,
    max_file_rows,
    rows_within,
    task_peak_bytes,
)

GB = 2**30


def _index(n_genes: int, rows_per_gene: int = 900, genes_per_file: int = 100) -> GeneIndex:
    table = pd.DataFrame(
        {"n_rows": rows_per_gene, "n_neither": rows_per_gene - 20, "n_donor": 10, "n_acceptor": 10,
         "files": [(i // genes_per_file,) for i in range(n_genes)]},
        index=[f"G{i:05d}" for i in range(n_genes)],
    )
    return GeneIndex(table, tuple(f"f{i}" for i in range(-(-n_genes // genes_per_file))))


def test_task_peak_grows_with_rows_features_and_file_share():
    base = task_peak_bytes(100_000, 150, file_rows=50_000)
    assert task_peak_bytes(200_000, 150, file_rows=50_000) > base
    assert task_peak_bytes(100_000, 1_200, file_rows=50_000) > base
    assert task_peak_bytes(100_000, 150) > base  # one file holding every row is the worst case
    assert task_peak_bytes(0, 1) >= TASK_BASE_BYTES
    assert task_peak_bytes(1_000, 150, max_bin=64) < task_peak_bytes(1_000, 150)


@pytest.mark.parametrize("file_rows", [None, 10_000, 10**9])
def test_rows_within_inverts_the_task_peak(file_rows):
    budget = 3 * GB
    rows = rows_within(budget, 1_170, file_rows=file_rows)
    assert rows > 0
    assert task_peak_bytes(rows, 1_170, file_rows=file_rows) <= budget < task_peak_bytes(rows + 10, 1_170, file_rows=file_rows)
    assert rows_within(TASK_BASE_BYTES // 2, 100) == 0


def test_max_file_rows_is_the_largest_file():
    index = _index(250, rows_per_gene=10, genes_per_file=100)
    assert max_file_rows(index) == 1_000


def test_auto_picks_single_when_one_fit_fits_comfortably():
    index = _index(1_000)
    choice = choose_strategy("auto", index=index, n_features=150, worker_memory=32 * GB, memory_fraction=0.6)
    assert choice.name == "single" and choice.genes_per_batch is None
    assert choice.peak_estimate <= choice.task_budget
    assert "within the" in choice.reason and "900,000 rows" in choice.reason


def test_auto_picks_batch_ensemble_with_batches_that_fit_the_worker():
    index = _index(10_000)
    choice = choose_strategy("auto", index=index, n_features=1_170, worker_memory=8 * GB, memory_fraction=0.6)
    assert choice.name == "batch-ensemble"
    assert choice.peak_estimate > choice.task_budget
    assert 2 <= choice.genes_per_batch < 10_000
    # a batch (plus one gene of packing slack) fits the task budget; twice as many genes would not
    rows = (choice.genes_per_batch + 1) * 900
    assert task_peak_bytes(rows, 1_170, file_rows=90_000) <= choice.task_budget
    assert task_peak_bytes(2 * rows, 1_170, file_rows=90_000) > choice.task_budget
    assert "more than the" in choice.reason and f"batches of {choice.genes_per_batch} genes" in choice.reason


def test_max_genes_per_batch_and_max_memory_gb_cap_the_batches():
    index = _index(10_000)
    roomy = choose_strategy("auto", index=index, n_features=150, worker_memory=64 * GB, memory_fraction=0.6,
                            max_genes_per_batch=300, train_all_genes=True)
    assert roomy.name == "batch-ensemble" and roomy.genes_per_batch == 300
    assert "forced by --train-all-genes" in roomy.reason and "capped by --max-genes-per-batch" in roomy.reason
    capped = choose_strategy("auto", index=index, n_features=150, worker_memory=64 * GB, memory_fraction=0.6,
                             max_memory_gb=1.0)
    assert capped.task_budget == GB and capped.name == "batch-ensemble"
    assert capped.genes_per_batch < 1_200 and "capped by memory" in capped.reason


def test_an_explicit_strategy_is_kept_and_says_so():
    index = _index(100)
    choice = choose_strategy("batch-ensemble", index=index, n_features=150, worker_memory=64 * GB, memory_fraction=0.6)
    assert choice.name == "batch-ensemble" and choice.reason == "requested with --strategy batch-ensemble"
    assert choice.genes_per_batch == 100  # never more genes per batch than the dataset has


def test_a_requested_single_model_too_large_for_the_workers_is_warned_about():
    index = _index(10_000)
    tight = choose_strategy("single", index=_index(500), n_features=1_170, worker_memory=8 * GB, memory_fraction=0.6,
                            threads_per_worker=4)
    assert tight.name == "single" and tight.reason == "requested with --strategy single"
    assert tight.task_budget < tight.peak_estimate < 0.8 * 8 * GB  # over the budget, under the pause threshold
    assert tight.warning.startswith("--strategy single: one fit on all 450,000 rows x 1170 features needs ~")
    assert "--strategy auto would train a batch ensemble (batches of" in tight.warning
    assert (tight.concurrent_fits, tight.nthread) == (1, 4)  # one fit at a time, with every thread
    with pytest.raises(TrainingError, match=r"too small to hold one training task: a single fit needs ~.*--memory-limit"):
        choose_strategy("single", index=index, n_features=1_170, worker_memory=8 * GB, memory_fraction=0.6)
    roomy = choose_strategy("single", index=_index(100), n_features=150, worker_memory=8 * GB, memory_fraction=0.6)
    assert roomy.name == "single" and roomy.warning == ""
    other = choose_strategy("batch-ensemble", index=index, n_features=1_170, worker_memory=8 * GB,
                            memory_fraction=0.6)
    assert other.warning == ""


def test_a_worker_too_small_for_any_batch_is_named_in_the_reason():
    # 2-gene batches (~640 MiB) exceed 60 % of 820 MiB but stay under the 80 % pause threshold: trained, one at a time
    choice = choose_strategy("auto", index=_index(100), n_features=1_170, worker_memory=820 * 2**20, memory_fraction=0.6,
                             threads_per_worker=2)
    assert choice.name == "batch-ensemble" and choice.genes_per_batch == 2
    assert "even 2-gene batches exceed" in choice.reason
    assert choice.concurrent_fits == 1 and choice.nthread == 2


def test_a_worker_too_small_for_one_task_is_refused_before_training():
    with pytest.raises(TrainingError, match=r"too small to hold one training task: a batch-ensemble fit needs ~.* "
                                            r"512.0 MiB memory limit"):
        choose_strategy("auto", index=_index(100), n_features=1_170, worker_memory=GB // 2, memory_fraction=0.6)


@pytest.mark.parametrize(("threads", "memory", "held", "expected"), [
    (4, 16 * GB, 0, (4, 1)),            # roomy: one fit per thread, one XGBoost thread each
    (4, 4 * GB, 0, (2, 2)),             # two ~1.1 GiB fits fit in 60 % of 4 GiB: two at once, two threads each
    (4, 2 * GB, 0, (1, 4)),             # one at a time, with every thread
    (4, 4 * GB, 2 * GB, (1, 4)),        # the worker already holds 2 GiB: room for one
])
def test_the_plan_runs_fewer_concurrent_fits_when_a_worker_cannot_hold_one_per_thread(threads, memory, held, expected):
    from metadask.plan import plan_concurrency

    task = TASK_BASE_BYTES + 800 * 2**20
    n, nthread, why = plan_concurrency("single", task, threads=threads, worker_memory=memory, memory_fraction=0.6,
                                       worker_held=held)
    assert (n, nthread) == expected
    assert ("instead of 4 (one per thread)" in why or "1 fit at a time" in why) == (n < threads)
    assert plan_concurrency("distributed", task, threads=threads, worker_memory=memory, memory_fraction=0.6) == (None, None, "")


# -- on real LocalClusters with different memory limits ---------------------------------------

OPTS = {"n_folds": 3, "n_estimators": 10, "analysis": False, "seed": 2}


@pytest.fixture(scope="module")
def roomy_run(cluster, tiny_dataset, tmp_path_factory):
    """auto on the session cluster: workers with several GB each."""
    import metadask
    from distributed import Client

    with Client(cluster) as client:
        return metadask.train(tiny_dataset, tmp_path_factory.mktemp("auto") / "roomy", client=client, strategy="auto", **OPTS)


def test_auto_trains_a_single_model_on_small_data_and_large_workers(roomy_run):
    r = roomy_run
    assert r.strategy == "single"
    assert r.reason.startswith("one fit on all") and "within the" in r.reason
    summary = json.loads(open(f"{r.out_dir}/training_summary.json").read())
    assert summary["strategy"] == "single" and summary["strategy_reason"] == r.reason
    assert f"Strategy Reason: {r.reason}" in open(f"{r.out_dir}/training_summary.txt").read()


def test_auto_trains_a_batch_ensemble_when_one_fit_exceeds_the_worker_budget(roomy_run, tiny_dataset, tmp_path):
    """A worker whose task budget lies between one batch and the whole dataset gets an ensemble."""
    import metadask
    from distributed import Client, LocalCluster

    from metadask.dataset import build_gene_index, open_dataset

    index = build_gene_index(open_dataset(tiny_dataset))
    n_features = len(roomy_run.features)
    whole = task_peak_bytes(index.n_rows, n_features, file_rows=max_file_rows(index))
    fixed = task_peak_bytes(0, n_features)
    limit = 1536 * 2**20
    fraction = (fixed + 0.6 * (whole - fixed)) / limit  # room for ~60 % of the rows in one task
    with dask.config.set({"metadask.task-memory-fraction": fraction}), \
            LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=limit, dashboard_address=":0",
                         env={"OMP_WAIT_POLICY": "PASSIVE"}) as cl, Client(cl) as client:
        r = metadask.train(tiny_dataset, tmp_path / "tight", client=client, strategy="auto", **OPTS)
        paused = client.run(lambda dask_worker: str(dask_worker.status))
    assert r.strategy == "batch-ensemble"
    assert "more than the" in r.reason and "capped by memory" in r.reason
    gpb = r.details["genes_per_batch"]
    assert 2 <= gpb < index.n_genes and r.details["n_batches"] >= 2
    assert r.details["strategy_label"] == f"Batch Ensemble ({gpb} genes/batch)"
    assert f"Training Strategy: Batch Ensemble ({gpb} genes/batch)" in open(f"{r.out_dir}/training_summary.txt").read()
    # every member fit stayed within the worker's memory limit
    assert int(r.fits["peak_rss"].max()) < limit
    assert set(paused.values()) == {"Status.running"}
    assert np.isfinite(r.fold_metrics["macro_f1"]).all()


def test_train_all_genes_forces_the_batch_ensemble(client, tiny_dataset, tmp_path):
    import metadask

    r = metadask.train(tiny_dataset, tmp_path / "all", client=client, strategy="auto", train_all_genes=True,
                       max_genes_per_batch=20, **OPTS)
    assert r.strategy == "batch-ensemble"
    assert r.reason.startswith("forced by --train-all-genes")
    assert r.details["genes_per_batch"] == 20 and r.details["n_batches"] == 2


def test_memory_model_benchmark_smoke_run():
    """``python -m benchmarks memory_model --tiny`` measures real fit tasks and compares them."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.memory_model import main

    r = main(["--tiny"])
    assert len(r["results"]) == 2
    for row in r["results"]:
        assert row["measured_peak"] > row["idle_worker_rss"] > 0
        assert abs(row["error"]) < 0.5  # the full-size run checks the +-25 % target


def test_a_requested_single_model_over_the_task_budget_trains_and_logs_the_warning(client, tiny_dataset, tmp_path,
                                                                                    caplog):
    import logging

    import metadask

    with caplog.at_level(logging.INFO, logger="metadask"):
        r = metadask.train(tiny_dataset, tmp_path / "forced", client=client, strategy="single", max_memory_gb=0.05,
                           **OPTS)
    assert r.strategy == "single"
    warned = [rec for rec in caplog.records if rec.levelno == logging.WARNING and "--strategy single" in rec.message]
    assert len(warned) == 1 and "more than the 51.2 MiB task budget" in warned[0].message
