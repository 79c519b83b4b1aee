"""Fewer, cheaper fits (issue 17): shared reads per fold, the CV-ensemble final model, --device plumbing."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb
from click.testing import CliRunner

from metadask.config import TrainConfig
from metadask.dataset.schema import LABELS
from metadask.errors import ConfigError
from metadask.models.bundle import load_model
from metadask.models.ensemble import EnsembleModel

OPTS = {"n_folds": 3, "n_estimators": 8, "analysis": False, "seed": 5}


def _train(dataset, out, client, **kw):
    import metadask

    return metadask.train(str(dataset), str(out), client=client, **{**OPTS, **kw})


def test_a_cv_ensemble_final_model_is_the_fold_models_and_leaves_the_out_of_fold_scores_unchanged(tiny_dataset, tmp_path, client):
    refit = _train(tiny_dataset, tmp_path / "refit", client, strategy="single")
    cvens = _train(tiny_dataset, tmp_path / "cvens", client, strategy="single", final_model="cv-ensemble")
    assert set(refit.fits["scope"]) == {"cv", "final"}
    assert set(cvens.fits["scope"]) == {"cv"}  # no refit on every gene
    cols = [f"margin_{c}" for c in LABELS]
    a = refit.oof.sort_values(["gene", "position"])[cols].to_numpy()
    b = cvens.oof.sort_values(["gene", "position"])[cols].to_numpy()
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)  # out-of-fold quality is the fold models', identical
    model = load_model(tmp_path / "cvens" / "model")
    assert isinstance(model, EnsembleModel) and model.n_members == OPTS["n_folds"]
    np.testing.assert_allclose(model.weights, 1 / OPTS["n_folds"])
    assert "CV fold models" in model.describe()
    files = [p.name for p in (tmp_path / "cvens" / "model").rglob("*") if p.is_file()]
    assert files and not any(f.endswith((".pkl", ".pickle", ".joblib")) for f in files)
    # the final margins are the mean of the fold models' margins
    x = np.random.default_rng(0).random((50, len(model.features)), dtype=np.float32)
    folds = [cvens.fold_models[f] for f in sorted(cvens.folds.unique())]
    expected = np.mean([m.predict_margin(x) for m in folds], axis=0)
    np.testing.assert_allclose(model.predict_margin(x), expected, rtol=1e-5, atol=1e-5)


def test_a_batch_ensemble_with_full_cv_can_use_its_cv_members_as_the_final_model(tiny_dataset, tmp_path, client):
    res = _train(tiny_dataset, tmp_path / "be", client, strategy="batch-ensemble", ensemble_cv="full",
                 final_model="cv-ensemble", max_genes_per_batch=40)
    assert set(res.fits["scope"]) == {"cv-member"}
    assert res.model.n_members == OPTS["n_folds"]
    assert res.model.info["final_model"] == "cv-ensemble"


def test_shared_final_fits_are_sized_by_their_cv_fits_like_single_fits(tiny_dataset):
    from metadask.dataset.index import build_gene_index
    from metadask.dataset.rows import GeneSet
    from metadask.dataset.source import open_dataset
    from metadask.models.boosted import FitOutput
    from metadask.strategies.tasks import FitSpec, run_fit, run_fits

    ds = open_dataset(tiny_dataset)
    index = build_gene_index(ds)
    feats = [f for f in ds.schema.feature_columns][:20]
    gs = GeneSet(tuple(index.genes), tuple(ds.files))
    params = TrainConfig(seed=1).xgb_params()
    specs = [FitSpec(key=f"final-{c}", scope="final", cls=k, fit=gs, valid=None, eval_genes=(), n_estimators=50,
                     early_stopping_rounds=0, params=params) for k, c in enumerate(LABELS)]
    cv = [[FitOutput(b"", 0, n, 0.0, 0) for n in (3 + k, 5 + k)] for k in range(len(LABELS))]
    shared = run_fits(ds, feats, specs, cv)
    for k, spec in enumerate(specs):
        alone = run_fit(ds, feats, spec, cv[k])
        assert shared[k].n_trees == alone.n_trees == 4 + k  # the mean of the CV fits' tree counts
        assert shared[k].booster == alone.booster  # one quantised matrix: the same trees


def test_device_is_validated_and_reaches_the_xgboost_parameters():
    assert TrainConfig().xgb_params()["device"] == "cpu"
    assert TrainConfig(device="cuda:1").validate().xgb_params()["device"] == "cuda:1"
    with pytest.raises(ConfigError, match="'device' option must be 'cpu', 'cuda' or 'cuda:<ordinal>'.*--device"):
        TrainConfig(device="tpu").validate()
    with pytest.raises(ConfigError, match="final_model"):
        TrainConfig(final_model="average").validate()


def test_device_is_set_on_the_boosters_that_predict_and_explain():
    from metadask.models.boosted import BoosterModel, booster_margins

    rng = np.random.default_rng(0)
    x = rng.random((200, 4), dtype=np.float32)
    boosters = [xgb.train({"objective": "binary:logistic", "device": "cpu"}, xgb.DMatrix(x, label=(x[:, k] > 0.5)), 3)
                for k in range(3)]
    booster_margins(boosters, x, device="cpu")
    assert all('"device":"cpu"' in b.save_config().replace(" ", "") for b in boosters)
    model = BoosterModel(boosters, ["a", "b", "c", "d"])
    assert model.device is None  # by default the boosters predict where they are
    model.device = "cpu"
    assert model.contributions(x[:5]).shape == (5, 3, 5)


def test_device_cuda_without_dask_cuda_is_one_clear_error(monkeypatch):
    import builtins

    from metadask.cluster import connect

    real_import = builtins.__import__

    def no_dask_cuda(name, *a, **k):
        if name == "dask_cuda" or name.startswith("dask_cuda."):
            raise ImportError("No module named 'dask_cuda'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_dask_cuda)
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match=r"--device cuda .*dask-cuda.*not installed.*pip install dask-cuda"):
        with connect(device="cuda", cluster="local"):
            pass


def test_train_with_device_cuda_and_no_dask_cuda_exits_2_with_one_line(tiny_dataset, tmp_path, monkeypatch):
    import builtins

    from metadask.cli import main

    real_import = builtins.__import__

    def no_dask_cuda(name, *a, **k):
        if name == "dask_cuda" or name.startswith("dask_cuda."):
            raise ImportError("No module named 'dask_cuda'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_dask_cuda)
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    result = CliRunner().invoke(main, ["train", "--dataset", str(tiny_dataset), "--out-dir", str(tmp_path / "o"),
                                       "--device", "cuda", "--cluster", "local"])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "dask-cuda" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["train", "--dataset", str(tiny_dataset), "--out-dir", str(tmp_path / "p"),
                                       "--device", "gpu"])
    assert result.exit_code == 2 and "--device" in result.output and "Traceback" not in result.output
