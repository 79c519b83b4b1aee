"""The ``incremental`` strategy (SGD over gene-aligned partitions) and its linear model."""

from __future__ import annotations

import time

import dask
import numpy as np
import pandas as pd
import pytest

import metadask
from metadask.config import TrainConfig
from metadask.dataset.index import build_gene_index
from metadask.dataset.source import open_dataset
from metadask.dataset.synthetic import LEAKY_COLUMNS
from metadask.errors import ConfigError, ModelError
from metadask.models.bundle import save_model
from metadask.models.linear import LinearModel
from metadask.plan import assign_folds, plan_folds
from metadask.strategies.base import TrainContext
from metadask.strategies.incremental import IncrementalStrategy, Moments

EPOCHS = 4  # keeps the tests quick; the default is 10


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


@pytest.fixture(scope="module")
def incremental_run(cluster, tiny_dataset, tmp_path_factory):
    from distributed import Client

    out = tmp_path_factory.mktemp("incremental") / "run"
    with Client(cluster) as c, dask.config.set({"metadask.incremental.epochs": EPOCHS}):
        t0 = time.perf_counter()
        result = metadask.train(tiny_dataset, out, client=c, strategy="incremental", n_folds=3, analysis=False)
        result.details["test_wall_s"] = time.perf_counter() - t0
    return result, out


def test_incremental_oof_predicts_every_row_once_from_models_that_never_saw_its_gene(incremental_run, tiny_dataset):
    result, _ = incremental_run
    ds = open_dataset(tiny_dataset)
    rows = pd.concat([ds.read_file(f, ["gene_id", "position"]) for f in ds.files], ignore_index=True)
    oof = result.oof
    assert len(oof) == len(rows) and not oof.duplicated(["gene", "position"]).any()
    assert set(zip(oof["gene"], oof["position"])) == set(zip(rows["gene_id"].astype(str), rows["position"]))
    per_gene = oof.groupby("gene")["fold"].agg(["nunique", "first"])
    assert (per_gene["nunique"] == 1).all()
    assert (per_gene["first"] == result.folds.loc[per_gene.index]).all()
    cv = result.fits[result.fits["scope"] == "cv"]
    for f, n_test in oof.groupby("fold").size().items():
        assert (cv[cv["fold"] == f]["rows"] + n_test <= len(rows)).all()


def test_incremental_records_per_epoch_histories_and_final_epochs_from_cv(incremental_run):
    result, _ = incremental_run
    fits = result.fits
    assert sorted(fits["scope"].value_counts().items()) == [("cv", 9), ("final", 3)]
    for key, h in result.histories.items():
        assert key.startswith("cv-") and set(h) == {"train", "valid"}
        assert len(h["valid"]) == len(h["train"]) == EPOCHS and np.isfinite(h["valid"]).all()
        best = fits.set_index("key").at[key, "best_iteration"]
        assert h["valid"][best] == min(h["valid"])
    for c in ("neither", "donor", "acceptor"):
        cv = fits[(fits["scope"] == "cv") & (fits["cls"] == c)]
        final = fits[(fits["scope"] == "final") & (fits["cls"] == c)].iloc[0]
        assert final["n_trees"] == max(1, int(round(cv["n_trees"].mean())))
        assert result.model.info["epochs"][c] == final["n_trees"]


def test_incremental_bundle_loads_and_predicts_exactly_like_the_trained_model(incremental_run, tiny_dataset):
    result, out = incremental_run
    loaded = metadask.load_model(out / "model")
    assert isinstance(loaded, LinearModel) and loaded.manifest["strategy"] == "incremental"
    ds = open_dataset(tiny_dataset)
    df = ds.read_file(ds.files[-1])
    np.testing.assert_array_equal(loaded.predict_margin(loaded.matrix(df)), result.model.predict_margin(result.model.matrix(df)))
    np.testing.assert_array_equal(loaded.predict_proba(df), result.model.predict_proba(df))


def test_incremental_meta_model_beats_the_base_model(incremental_run):
    result, _ = incremental_run
    fm = result.fold_metrics
    # measured on this set: binary F1 ~0.92 (4 epochs) against the base model's 0.87
    assert fm["meta_binary_f1"].mean() > fm["base_binary_f1"].mean() + 0.02
    assert fm["macro_f1"].mean() > 0.9


def test_incremental_results_do_not_depend_on_the_number_of_workers(client, tiny_dataset):
    from distributed import Client, LocalCluster

    with dask.config.set({"metadask.incremental.epochs": 2}):
        two = IncrementalStrategy(TrainConfig()).fit(make_context(client, tiny_dataset, n_folds=3))
        with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0", processes=True) as lc, \
                Client(lc) as one_client:
            one = IncrementalStrategy(TrainConfig()).fit(make_context(one_client, tiny_dataset, n_folds=3))
            one_oof = one.oof  # its parts live on this cluster's worker
    key = ["gene", "position"]
    a, b = two.oof.sort_values(key).reset_index(drop=True), one_oof.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    np.testing.assert_array_equal(two.model.coef, one.model.coef)
    np.testing.assert_array_equal(two.model.mean, one.model.mean)


def test_incremental_rejects_zero_epochs_naming_the_setting(client, tiny_dataset):
    ctx = make_context(client, tiny_dataset, n_folds=3)
    with dask.config.set({"metadask.incremental.epochs": 0}), pytest.raises(ConfigError, match="incremental.epochs"):
        IncrementalStrategy(ctx.config).fit(ctx)


# -- the streaming statistics and the linear model --------------------------------------

def test_merged_moments_equal_the_moments_of_all_rows_ignoring_missing_values():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(500, 4))
    x[rng.random(x.shape) < 0.2] = np.nan
    x[:, 3] = np.nan  # never observed
    parts = np.array_split(x, [50, 51, 300])
    m = Moments.empty(4)
    for p in parts:
        m = m.merge(Moments.of(p))
    mean, scale = m.standardisation()
    np.testing.assert_allclose(mean[:3], np.nanmean(x[:, :3], axis=0), rtol=1e-12)
    np.testing.assert_allclose(scale[:3], np.nanstd(x[:, :3], axis=0), rtol=1e-12)
    assert mean[3] == 0.0 and scale[3] == 1.0


def _linear(rng, n_features=5) -> LinearModel:
    return LinearModel(rng.normal(size=(3, n_features)), rng.normal(size=3), rng.normal(size=n_features),
                       rng.uniform(0.5, 2, size=n_features), [f"f{j}" for j in range(n_features)])


def test_linear_contributions_add_up_to_the_margin_and_missing_values_count_as_the_mean():
    rng = np.random.default_rng(1)
    model = _linear(rng)
    x = rng.normal(size=(20, 5)).astype(np.float32)
    x[0, 2] = np.nan
    contrib = model.contributions(x)
    assert contrib.shape == (20, 3, 6)
    np.testing.assert_allclose(contrib.sum(axis=2), model.predict_margin(x), rtol=1e-12, atol=1e-12)
    assert (contrib[0, :, 2] == 0).all()
    imp = model.importance()
    assert list(imp.columns) == ["cls", "feature", "gain", "weight", "cover"]
    np.testing.assert_allclose(imp["gain"].to_numpy(), np.abs(model.coef).ravel())


def test_linear_model_bundle_round_trips_exactly_and_rejects_damaged_numbers(tmp_path):
    import json

    rng = np.random.default_rng(2)
    model = _linear(rng)
    save_model(model, tmp_path / "model", strategy="incremental")
    loaded = metadask.load_model(tmp_path / "model")
    x = rng.normal(size=(50, 5)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_margin(x), model.predict_margin(x))
    files, settings = model.to_files()
    assert files == {} and json.loads(json.dumps(settings)) == settings
    settings["linear"]["coef"] = settings["linear"]["coef"][:2]
    with pytest.raises(ValueError):
        LinearModel.from_files({}, settings, model.features)
    with pytest.raises(ModelError, match="Input array has shape"):
        model.predict_proba(np.zeros((2, 4)))
