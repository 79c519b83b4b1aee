"""Training core: folds, the single strategy on Dask futures, calibration, bundles, CLI."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from distributed import Client, LocalCluster

import metadask
from metadask.cli import main as cli
from metadask.dataset import build_gene_index, open_dataset
from metadask.errors import ConfigError, ModelError, OutputError, TrainingError
from metadask.plan import assign_folds, plan_folds

FAST = {"n_folds": 3, "n_estimators": 25, "seed": 3, "analysis": False}


@pytest.fixture(scope="module")
def mclient(cluster):
    with Client(cluster, set_as_default=False) as c:
        yield c


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory, mclient):
    out = tmp_path_factory.mktemp("runs") / "single"
    result = metadask.train(str(tiny_dataset), out, client=mclient, strategy="single", **FAST)
    return result, out


def test_folds_never_share_genes_and_cover_every_gene(tiny_dataset):
    index = build_gene_index(open_dataset(tiny_dataset))
    folds = assign_folds(index, 4, seed=1)
    assert sorted(folds.index) == sorted(index.genes)
    plans = plan_folds(index, folds, valid_size=0.2, seed=1)
    tests = [set(p.test) for p in plans]
    for i, a in enumerate(tests):
        for b in tests[i + 1:]:
            assert not a & b
        plan = plans[i]
        assert not set(plan.fit) & set(plan.valid)
        assert not (set(plan.fit) | set(plan.valid)) & a
        assert set(plan.train_eval) <= set(plan.fit)
    assert set().union(*tests) == set(index.genes)


def test_folds_are_balanced_by_rows_and_a_function_of_the_seed(tiny_dataset):
    index = build_gene_index(open_dataset(tiny_dataset))
    a, b, c = assign_folds(index, 4, 9), assign_folds(index, 4, 9), assign_folds(index, 4, 10)
    assert a.equals(b)
    assert not a.equals(c)
    rows = [index.rows(a.index[a == f]) for f in range(4)]
    assert max(rows) - min(rows) <= index.table["n_rows"].max()


def test_every_row_gets_one_out_of_fold_prediction_from_a_model_that_never_saw_its_gene(trained, tiny_dataset):
    result, out = trained
    index = build_gene_index(open_dataset(tiny_dataset))
    assert len(result.oof) == index.n_rows
    per_gene = result.oof.groupby("gene")["fold"].nunique()
    assert (per_gene == 1).all()
    assert (result.oof.groupby("gene")["fold"].first() == result.folds.loc[per_gene.index]).all()
    saved = pd.read_parquet(out / "oof_predictions.parquet")
    assert {"gene", "position", "label", "donor_score", "prob_donor", "raw_donor", "fold"} <= set(saved.columns)


def test_calibrated_probabilities_sum_to_one(trained, tiny_dataset):
    result, _ = trained
    p = result.oof[["prob_neither", "prob_donor", "prob_acceptor"]].to_numpy()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)  # prob_* are held as float32 (docs/analysis.md)
    ds = open_dataset(tiny_dataset)
    df = ds.read_file(ds.files[0])
    np.testing.assert_allclose(result.model.predict_proba(df).sum(axis=1), 1.0, atol=1e-9)
    assert all(c.method == "platt" for c in result.model.calibrators)


def test_meta_model_beats_the_base_model_on_binary_f1(trained):
    fm = trained[0].fold_metrics
    assert fm["meta_binary_f1"].mean() > fm["base_binary_f1"].mean() + 0.03
    assert (fm["meta_fn"] <= fm["base_fn"]).all()


def test_fold_metrics_file_has_the_promised_columns(trained):
    _, out = trained
    fm = pd.read_csv(out / "gene_cv_metrics.csv")
    expected = {
        "fold", "accuracy", "macro_f1", "f1_neither", "f1_donor", "f1_acceptor", "ap_donor", "ap_acceptor",
        "base_binary_f1", "meta_binary_f1", "base_binary_ap", "meta_binary_ap", "base_binary_roc_auc",
        "meta_binary_roc_auc", "base_fp", "meta_fp", "base_fn", "meta_fn", "delta_fp", "delta_fn",
        "base_topk_donor", "meta_topk_donor", "best_iteration_donor", "n_rows", "n_genes", "seconds",
    }
    assert expected <= set(fm.columns)
    assert len(fm) == FAST["n_folds"]


def test_summary_and_manifest_are_written_and_consistent(trained):
    result, out = trained
    text = (out / "training_summary.txt").read_text()
    assert "Training Strategy: Single XGBoost Model" in text
    assert f"Features Used: {len(result.features)}" in text
    manifest = pd.read_csv(out / "feature_manifest.csv")
    assert manifest.loc[manifest["used"], "feature"].tolist() == result.features
    assert not (out / "RUN_INCOMPLETE").exists()


def test_saved_and_loaded_model_predicts_exactly_what_the_trained_model_predicts(trained, tiny_dataset):
    result, out = trained
    model = metadask.load_model(out / "model")
    ds = open_dataset(tiny_dataset)
    df = ds.read_file(ds.files[1])
    np.testing.assert_array_equal(model.predict_proba(df), result.model.predict_proba(df))
    np.testing.assert_array_equal(model.predict(df), result.model.predict(df))
    x = result.model.matrix(df)
    np.testing.assert_array_equal(model.predict_proba(x), result.model.predict_proba(x))


def test_model_reorders_columns_and_fills_missing_kmers_but_rejects_other_missing_features(trained, tiny_dataset):
    result, _ = trained
    ds = open_dataset(tiny_dataset)
    df = ds.read_file(ds.files[0])
    shuffled = df[df.columns[::-1]]
    np.testing.assert_array_equal(result.model.predict_proba(shuffled), result.model.predict_proba(df))
    kmer = next(f for f in result.features if f.startswith("3mer_"))
    filled = df.assign(**{kmer: 0.0})
    np.testing.assert_array_equal(result.model.predict_proba(df.drop(columns=[kmer])), result.model.predict_proba(filled))
    with pytest.raises(ModelError, match="donor_score"):
        result.model.predict_proba(df.drop(columns=["donor_score"]))


def test_model_predicts_on_dask_dataframes_with_map_partitions(trained, tiny_dataset, mclient):
    result, _ = trained
    ds = open_dataset(tiny_dataset)
    ddf = ds.to_dask()
    got = result.model.predict_proba(ddf).compute()
    want = result.model.predict_proba(ddf.compute())
    np.testing.assert_allclose(got.to_numpy(), want, rtol=0, atol=1e-12)


def test_a_bundle_whose_files_were_modified_is_refused(trained, tmp_path):
    import shutil

    _, out = trained
    copy = tmp_path / "model"
    shutil.copytree(out / "model", copy)
    booster = copy / "boosters" / "donor.ubj"
    data = bytearray(booster.read_bytes())
    data[-10] ^= 0xFF
    booster.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum"):
        metadask.load_model(copy)


def test_the_manifest_records_what_inference_needs(trained):
    result, out = trained
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    assert manifest["strategy"] == "single"
    assert manifest["features"] == result.features
    assert manifest["label_map"] == {"0": "neither", "1": "donor", "2": "acceptor"}
    assert set(manifest["libraries"]) >= {"metadask", "xgboost"}
    assert all(len(v) == 64 for v in manifest["files"].values())
    assert manifest["training"]["n_estimators"] == FAST["n_estimators"]


def test_same_seed_gives_bitwise_identical_oof_predictions_on_one_and_two_workers(trained, tiny_dataset, tmp_path, caplog):
    result, _ = trained
    caplog.set_level(logging.INFO, logger="metadask")
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as one, Client(one, set_as_default=False) as c1:
        again = metadask.train(str(tiny_dataset), tmp_path / "one", client=c1, strategy="single", **FAST)
    cols = ["margin_neither", "margin_donor", "margin_acceptor", "prob_neither", "prob_donor", "prob_acceptor"]
    pd.testing.assert_frame_equal(again.oof[cols], result.oof[cols], check_exact=True)
    assert again.folds.equals(result.folds)
    # progress: a line per finished fit and per out-of-fold prediction task
    lines = [r.getMessage() for r in caplog.records if r.name == "metadask"]
    assert sum("CV fit cv-f" in m for m in lines) == 3 * FAST["n_folds"]
    oof_lines = [m for m in lines if "out-of-fold predictions" in m and m.startswith("[")]
    assert len(oof_lines) == FAST["n_folds"] and oof_lines[-1].startswith(f"[{FAST['n_folds']}/{FAST['n_folds']}]")


def test_cli_train_and_library_give_the_same_predictions_and_predict_writes_ids_and_calls(trained, tiny_dataset, tmp_path, cluster):
    result, _ = trained
    out = tmp_path / "cli"
    runner = CliRunner()
    args = ["train", "--dataset", str(tiny_dataset), "--out-dir", str(out), "--scheduler", cluster.scheduler_address,
            "--n-folds", "3", "--n-estimators", "25", "--seed", "3", "--no-analysis"]
    r = runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    cli_oof = pd.read_parquet(out / "oof_predictions.parquet")
    np.testing.assert_array_equal(cli_oof["prob_donor"].to_numpy(), result.oof["prob_donor"].to_numpy())
    preds = tmp_path / "preds"
    r = runner.invoke(cli, ["predict", "--model", str(out / "model"), "--dataset", str(tiny_dataset), "--out", str(preds),
                            "--scheduler", cluster.scheduler_address])
    assert r.exit_code == 0, r.output
    p = pd.read_parquet(preds)  # a directory of parts written by the workers
    assert {"gene_id", "position", "prob_neither", "prob_donor", "prob_acceptor", "splice_score", "call"} <= set(p.columns)
    assert len(p) == len(result.oof)
    ds = open_dataset(tiny_dataset)
    full = pd.concat([ds.read_file(f) for f in ds.files], ignore_index=True)
    merged = full[["gene_id", "position"]].merge(p, on=["gene_id", "position"], how="left")
    assert merged["prob_donor"].notna().all()


# -- bad input ----------------------------------------------------------------------------

def _cli(args):
    r = CliRunner().invoke(cli, args)
    err = getattr(r, "stderr", r.output) if hasattr(r, "stderr") else r.output
    return r.exit_code, err


def test_fewer_genes_than_folds_is_a_clear_error(tiny_dataset, tmp_path, cluster):
    code, err = _cli(["train", "--dataset", str(tiny_dataset), "--out-dir", str(tmp_path / "o"), "--n-folds", "41",
                      "--scheduler", cluster.scheduler_address])
    assert code == 2
    assert "n_folds" in err and "40 genes" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [("--n-folds", "1", "n_folds"), ("--n-estimators", "0", "n_estimators"), ("--n-estimators", "-5", "n_estimators"),
     ("--valid-size", "0.9", "valid_size"), ("--learning-rate", "0", "learning_rate")],
)
def test_bad_options_exit_with_status_two_before_anything_is_written(tiny_dataset, tmp_path, option, value, match):
    out = tmp_path / "o"
    code, err = _cli(["train", "--dataset", str(tiny_dataset), "--out-dir", str(out), option, value])
    assert code == 2
    assert match in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_an_output_directory_holding_a_run_is_refused_without_overwrite(trained, tiny_dataset):
    _, out = trained
    before = sorted(p.name for p in out.iterdir())
    code, err = _cli(["train", "--dataset", str(tiny_dataset), "--out-dir", str(out)])
    assert code == 2
    assert "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == before


def test_an_unreachable_scheduler_fails_quickly_with_its_address(tiny_dataset, tmp_path):
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    code, err = _cli(["train", "--dataset", str(tiny_dataset), "--out-dir", str(tmp_path / "o"),
                      "--scheduler", f"tcp://127.0.0.1:{port}", "--connect-timeout", "2"])
    assert code == 2
    assert f"127.0.0.1:{port}" in err
    assert time.perf_counter() - t0 < 30


def _write_dataset(path, frames):
    path.mkdir(parents=True)
    for i, df in enumerate(frames):
        df.to_parquet(path / f"batch_{i:05d}.parquet", index=False)


def _frame_from(tiny_dataset):
    ds = open_dataset(tiny_dataset)
    return pd.concat([ds.read_file(f) for f in ds.files[:2]], ignore_index=True)


def test_a_class_absent_from_the_training_data_is_named(tiny_dataset, tmp_path, mclient):
    df = _frame_from(tiny_dataset)
    df = df[df["splice_type"] != "acceptor"]
    _write_dataset(tmp_path / "d", [df])
    with pytest.raises(TrainingError, match="acceptor"):
        metadask.train(str(tmp_path / "d"), tmp_path / "o", client=mclient, **FAST)


def test_a_class_absent_from_one_fold_is_named_with_the_fold(tiny_dataset, tmp_path, mclient):
    df = _frame_from(tiny_dataset)
    genes = sorted(df["gene_id"].unique())
    # only one gene keeps its donors: some fold must lack donors
    drop = df["gene_id"].isin(genes[1:]) & (df["splice_type"] == "donor")
    df.loc[drop, "splice_type"] = "neither"
    _write_dataset(tmp_path / "d", [df])
    with pytest.raises(TrainingError, match=r"donor.*fold|fold.*donor"):
        metadask.train(str(tmp_path / "d"), tmp_path / "o", client=mclient, **FAST)


def test_an_infinite_feature_value_is_excluded_by_screening_or_a_clear_error_in_training(tiny_dataset, tmp_path, mclient):
    df = _frame_from(tiny_dataset)
    df.loc[5, "gc_content"] = np.inf
    _write_dataset(tmp_path / "d", [df])
    # seen by screening (the sample holds every gene here): excluded, with the reason
    result = metadask.train(str(tmp_path / "d"), tmp_path / "o", client=mclient, **FAST)
    assert "infinite" in result.excluded["gc_content"]
    # not screened (an earlier exclusion list is reused): the training read names the column
    empty = tmp_path / "excl.txt"
    empty.write_text("# nothing excluded\n")
    with pytest.raises(metadask.errors.MetadaskError, match="gc_content"):
        metadask.train(str(tmp_path / "d"), tmp_path / "o2", client=mclient, screening_from=str(empty), **FAST)


def test_an_all_nan_feature_column_is_excluded_with_its_reason(tiny_dataset, tmp_path, mclient):
    df = _frame_from(tiny_dataset)
    df["gc_content"] = np.nan
    _write_dataset(tmp_path / "d", [df])
    result = metadask.train(str(tmp_path / "d"), tmp_path / "o", client=mclient, **FAST)
    assert "gc_content" not in result.features
    assert "null" in result.excluded["gc_content"] or "missing" in result.excluded["gc_content"]


def test_unknown_library_options_list_the_known_ones(tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match="n_estimators"):
        metadask.train(str(tiny_dataset), tmp_path / "o", n_estimator=10)
    assert not (tmp_path / "o").exists()


def test_a_file_in_place_of_the_output_directory_is_refused(tiny_dataset, tmp_path):
    f = tmp_path / "o"
    f.write_text("keep me")
    with pytest.raises(OutputError):
        metadask.train(str(tiny_dataset), f, **FAST)
    assert f.read_text() == "keep me"


def test_calibration_cross_fits_over_at_most_five_groups_of_whole_folds():
    from metadask.training import calibration_groups

    few = np.repeat([3, 0, 7], 4)
    np.testing.assert_array_equal(calibration_groups(few), np.repeat([1, 0, 2], 4))  # one group per fold
    many = np.repeat(np.arange(64), 3)
    groups = calibration_groups(many)
    assert len(np.unique(groups)) == 5
    for f in range(64):  # a fold is never split between groups, so its rows are calibrated on other folds only
        assert len(np.unique(groups[many == f])) == 1
