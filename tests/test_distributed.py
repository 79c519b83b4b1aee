"""The ``distributed`` strategy: xgboost.dask over gene-aligned Dask arrays."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import dask
import numpy as np
import pandas as pd
import pytest

import metadask
from metadask.cluster import wait_for_workers
from metadask.config import TrainConfig
from metadask.dataset.index import build_gene_index
from metadask.dataset.source import open_dataset
from metadask.dataset.synthetic import LEAKY_COLUMNS
from metadask.errors import ClusterError, TrainingError
from metadask.plan import assign_folds, plan_folds
from metadask.strategies.base import TrainContext
from metadask.strategies.distributed import DistributedStrategy, gene_partitions, guarded


def make_context(client, path, **options) -> TrainContext:
    """A TrainContext without screening (every non-leaky feature), for strategy-level tests."""
    from metadask.cluster import describe

    ds = open_dataset(path)
    index = build_gene_index(ds)
    config = TrainConfig.from_options(**options)
    folds = assign_folds(index, config.n_folds, config.seed)
    plans = plan_folds(index, folds, valid_size=config.valid_size, seed=config.seed)
    features = [c for c in ds.schema.feature_columns if c not in LEAKY_COLUMNS]
    return TrainContext(client=client, dataset=ds, index=index, config=config, features=features, excluded={},
                        folds=folds, fold_plans=plans, cluster=describe(client))


def all_rows(path) -> pd.DataFrame:
    ds = open_dataset(path)
    return pd.concat([ds.read_file(f) for f in ds.files], ignore_index=True)


@pytest.fixture(scope="module")
def distributed_run(cluster, tiny_dataset, tmp_path_factory):
    from distributed import Client

    out = tmp_path_factory.mktemp("distributed") / "run"
    with Client(cluster) as c:
        t0 = time.perf_counter()
        result = metadask.train(tiny_dataset, out, client=c, strategy="distributed", n_folds=3, n_estimators=30,
                                analysis=False)
        result.details["test_wall_s"] = time.perf_counter() - t0
    return result, out


def test_distributed_oof_predicts_every_row_once_from_models_that_never_saw_its_gene(distributed_run, tiny_dataset):
    result, _ = distributed_run
    oof, rows = result.oof, all_rows(tiny_dataset)
    assert len(oof) == len(rows)
    assert not oof.duplicated(["gene", "position"]).any()
    expected = set(zip(rows["gene_id"].astype(str), rows["position"]))
    assert set(zip(oof["gene"], oof["position"])) == expected
    per_gene = oof.groupby("gene")["fold"].agg(["nunique", "first"])
    assert (per_gene["nunique"] == 1).all()
    assert (per_gene["first"] == result.folds.loc[per_gene.index]).all()
    cv = result.fits[result.fits["scope"] == "cv"]
    for f, n_test in oof.groupby("fold").size().items():
        # a fold's fit rows plus its held-out rows never exceed the dataset: no test gene was fit on
        assert (cv[cv["fold"] == f]["rows"] + n_test <= len(rows)).all()


def test_distributed_records_three_class_fits_per_fold_and_final_sized_by_cv(distributed_run):
    result, _ = distributed_run
    fits = result.fits
    assert sorted(fits["scope"].value_counts().items()) == [("cv", 9), ("final", 3)]
    for c in ("neither", "donor", "acceptor"):
        cv = fits[(fits["scope"] == "cv") & (fits["cls"] == c)]
        final = fits[(fits["scope"] == "final") & (fits["cls"] == c)].iloc[0]
        assert final["n_trees"] == max(1, int(round(cv["n_trees"].mean())))
    for key in (f"cv-f{f}-{c}" for f in range(3) for c in ("neither", "donor", "acceptor")):
        assert set(result.histories[key]) == {"train", "valid"}
        assert len(result.histories[key]["valid"]) >= fits.set_index("key").at[key, "n_trees"]


def test_distributed_bundle_loads_and_predicts_like_the_trained_model(distributed_run, tiny_dataset):
    result, out = distributed_run
    loaded = metadask.load_model(out / "model")
    assert loaded.manifest["strategy"] == "distributed"
    assert loaded.info["strategy"] == "distributed"
    ds = open_dataset(tiny_dataset)
    df = ds.read_file(ds.files[-1])
    np.testing.assert_array_equal(loaded.predict_proba(df), result.model.predict_proba(df))


def test_distributed_meta_model_beats_the_base_model(distributed_run):
    result, _ = distributed_run
    fm = result.fold_metrics
    assert fm["meta_binary_f1"].mean() > fm["base_binary_f1"].mean() + 0.03
    assert fm["macro_f1"].mean() > 0.9


def test_gene_partitions_keep_genes_whole_and_respect_the_row_cap(tiny_dataset):
    ds = open_dataset(tiny_dataset)
    index = build_gene_index(ds)
    genes = index.genes[::2]
    for cap in (None, 3000, 1):
        parts = gene_partitions(index, genes, cap)
        flat = [g for gs, _ in parts for g in gs.genes]
        assert sorted(flat) == sorted(genes) and len(flat) == len(set(flat))
        assert all(n == index.rows(gs.genes) for gs, n in parts)
        if cap is not None:
            assert all(n <= cap or len(gs.genes) == 1 for gs, n in parts)
        assert all(set(gs.files) == set(index.files_for(gs.genes)) for gs, _ in parts)
    assert len(gene_partitions(index, genes)) == len(ds.files)


def test_waiting_for_more_workers_than_the_cluster_has_fails_with_a_clear_error(client):
    with pytest.raises(ClusterError, match=r"Only 2 of the 5 workers asked for \(the distributed strategy\) .* within 1 s"):
        wait_for_workers(client, 5, timeout=1, asked_by="the distributed strategy")


def test_the_watchdog_stops_waiting_after_the_fit_timeout(client):
    t0 = time.perf_counter()
    with pytest.raises(TrainingError, match="did not finish within 1 s"):
        guarded(client, "a stuck fit", lambda: time.sleep(5), timeout=1, poll=0.1)
    assert time.perf_counter() - t0 < 3


def test_the_watchdog_reports_a_failed_fit_with_its_cause(client):
    def boom():
        raise ValueError("bad parameter 'max_depth'")

    with pytest.raises(TrainingError, match="cv-f0-donor failed: ValueError: bad parameter"):
        guarded(client, "cv-f0-donor", boom, poll=0.1)


def _kill_when_training_starts(pid: int, sig: int, delay: float, fired: dict) -> logging.Handler:
    class Trigger(logging.Handler):
        def emit(self, record):
            if "rows persisted on the workers" in record.getMessage() and "t" not in fired:
                fired["t"] = time.perf_counter() + delay
                threading.Timer(delay, os.kill, (pid, sig)).start()

    return Trigger()


# xgboost's tracker thread (in this process, on the LocalCluster scheduler) reports the broken ring after the test
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(("sig", "match"), [
    pytest.param(signal.SIGKILL, "left the cluster during distributed training", id="killed"),
    pytest.param(signal.SIGSTOP, "stopped responding|left the cluster", id="frozen"),
])
def test_distributed_training_fails_fast_with_a_clear_error_when_a_worker_is_lost(tiny_dataset, sig, match, caplog):
    from distributed import Client, LocalCluster

    caplog.set_level(logging.INFO, logger="metadask")  # the trigger listens for an INFO line
    fired: dict = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", processes=True,
                      env={"OMP_WAIT_POLICY": "PASSIVE"}) as cluster, Client(cluster) as client:
        pids = client.run(os.getpid)
        victim = pids[sorted(pids)[1]]
        ctx = make_context(client, tiny_dataset, n_folds=3, n_estimators=5000, early_stopping_rounds=0)
        handler = _kill_when_training_starts(victim, sig, 1.5, fired)
        logging.getLogger("metadask").addHandler(handler)
        try:
            with dask.config.set({"metadask.distributed.collective-timeout": 8}):
                with pytest.raises(TrainingError, match=match) as excinfo:
                    DistributedStrategy(ctx.config).fit(ctx)
            elapsed = time.perf_counter() - fired["t"]
            print(f"ended {elapsed:.1f} s after the worker was lost: {excinfo.value}")
        finally:
            logging.getLogger("metadask").removeHandler(handler)
            if sig == signal.SIGSTOP:
                os.kill(victim, signal.SIGCONT)
    # 5000 trees would take minutes: the run ended because of the lost worker, within a bounded time
    assert elapsed < 30, f"took {elapsed:.1f} s after the worker was lost"
