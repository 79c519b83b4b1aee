"""``metadask predict`` for real use: unlabelled data, out-of-core parts, calls at thresholds."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import xgboost as xgb
from click.testing import CliRunner

from metadask.cli import main as cli
from metadask.dataset import open_dataset
from metadask.dataset.schema import encode_labels
from metadask.errors import ConfigError, DatasetError, OutputError
from metadask.inference import PREDICTION_COLUMNS, predict_dataset, predict_frame
from metadask.models.boosted import BoosterModel, booster_from_bytes, booster_margins, fit_binary
from metadask.models.bundle import load_model, save_model
from metadask.models.thresholds import call_codes

STORED = 0.35  # the splice threshold the tiny model stores (not the 0.5 default)


def _rows(path) -> pd.DataFrame:
    ds = open_dataset(path, require_labels=False)
    return pd.concat([ds.read_file(f) for f in ds.files], ignore_index=True)


@pytest.fixture(scope="module")
def model_dir(tiny_dataset, tmp_path_factory):
    """A real model: three one-vs-rest boosters fit on the tiny dataset, with a stored threshold."""
    from metadask.dataset.synthetic import LEAKY_COLUMNS

    ds = open_dataset(tiny_dataset)
    df = _rows(tiny_dataset)
    features = [c for c in ds.schema.feature_columns if c not in LEAKY_COLUMNS]
    x = df[features].to_numpy(dtype=np.float32)
    y = encode_labels(df["splice_type"])
    params = {"objective": "binary:logistic", "max_depth": 4, "tree_method": "hist", "eta": 0.3}
    boosters = [booster_from_bytes(fit_binary(x, (y == k).astype(np.float32), params, 20).booster) for k in range(3)]
    model = BoosterModel(boosters, features)
    model.thresholds = {"splice": STORED, "source": "chosen by the test"}
    return save_model(model, tmp_path_factory.mktemp("model") / "model", strategy="single")


@pytest.fixture(scope="module")
def unlabelled(tiny_dataset, tmp_path_factory):
    """The tiny dataset's files without their label column (as a genome scan would be)."""
    out = tmp_path_factory.mktemp("data") / "unlabelled"
    out.mkdir()
    for f in open_dataset(tiny_dataset).files:
        table = pq.read_table(f)
        pq.write_table(table.drop_columns(["splice_type"]), out / os.path.basename(f))
    return out


def test_a_dataset_without_labels_is_refused_for_training_but_opens_for_prediction(unlabelled):
    with pytest.raises(DatasetError, match="No label column 'splice_type'.*--label-column"):
        open_dataset(unlabelled)
    ds = open_dataset(unlabelled, require_labels=False)
    assert not ds.schema.has_labels and ds.schema.label_encoding == "none"
    assert "splice_type" not in ds.schema.columns


def test_unlabelled_data_predicts_out_of_core_with_ids_passed_through_and_calls_at_the_stored_threshold(
        model_dir, unlabelled, tmp_path, client, caplog):
    caplog.set_level(logging.INFO, logger="metadask")
    out = tmp_path / "pred"
    n = predict_dataset(model_dir, unlabelled, out, client=client)
    rows = _rows(unlabelled)
    assert n == len(rows)
    parts = sorted(p.name for p in out.iterdir())
    assert parts == ["_predict.json", *(f"part.{i:05d}.parquet" for i in range(4))]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left
    p = pd.read_parquet(out)
    assert list(p.columns) == ["gene_id", "position", "transcript_id", "chrom", "strand", "absolute_position",
                               "neither_score", "donor_score", "acceptor_score", *PREDICTION_COLUMNS]
    # the same rows in the same order, and the same probabilities as the model in process
    pd.testing.assert_series_equal(p["gene_id"].astype(str), rows["gene_id"].astype(str), check_names=False)
    np.testing.assert_array_equal(p["position"].to_numpy(), rows["position"].to_numpy())
    model = load_model(model_dir)
    proba = model.predict_proba(rows)
    got = p[["prob_neither", "prob_donor", "prob_acceptor"]].to_numpy()
    np.testing.assert_allclose(got, proba, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(p["splice_score"], proba[:, 1] + proba[:, 2], rtol=1e-6, atol=1e-7)
    expected = np.array(["neither", "donor", "acceptor"])[call_codes(proba, STORED)]
    np.testing.assert_array_equal(p["call"].astype(str).to_numpy(), expected)
    assert (expected != np.array(["neither", "donor", "acceptor"])[call_codes(proba, 0.5)]).any()  # the threshold matters
    summary = json.loads((out / "_predict.json").read_text())
    assert summary["rows"] == n and summary["threshold"] == {"splice": STORED, "source": "chosen by the test"}
    # progress: one line per finished partition
    lines = [r.getMessage() for r in caplog.records if r.name == "metadask" and "] scored" in r.getMessage()]
    assert len(lines) == 4 and lines[-1].startswith("[4/4] scored ")


def test_the_threshold_option_overrides_the_stored_one_and_labels_pass_through(model_dir, tiny_dataset, tmp_path, cluster):
    out = tmp_path / "pred"
    r = CliRunner().invoke(cli, ["predict", "--model", str(model_dir), "--dataset", str(tiny_dataset), "--out", str(out),
                                 "--threshold", "0.9", "--scheduler", cluster.scheduler_address])
    assert r.exit_code == 0, r.output
    p = pd.read_parquet(out)
    rows = _rows(tiny_dataset)
    assert f"Wrote {len(rows):,} predictions" in r.output
    np.testing.assert_array_equal(p["splice_type"].to_numpy(), rows["splice_type"].to_numpy())
    proba = p[["prob_neither", "prob_donor", "prob_acceptor"]].to_numpy(dtype=np.float64)
    codes = pd.Categorical(p["call"], categories=["neither", "donor", "acceptor"]).codes
    np.testing.assert_array_equal(codes, call_codes(proba, 0.9))
    assert json.loads((out / "_predict.json").read_text())["threshold"]["splice"] == 0.9


@pytest.mark.parametrize("value", ["1.5", "0", "abc", "nan"])
def test_a_bad_threshold_exits_with_status_two_and_one_line(model_dir, unlabelled, tmp_path, value):
    out = tmp_path / "pred"
    r = CliRunner().invoke(cli, ["predict", "--model", str(model_dir), "--dataset", str(unlabelled), "--out", str(out),
                                 "--threshold", value])
    assert r.exit_code == 2
    err = r.stderr if hasattr(r, "stderr") else r.output
    assert len(err.strip().splitlines()) == 1 and "splice threshold" in err and "--threshold" in err
    assert not out.exists()
    with pytest.raises(ConfigError, match="splice threshold"):
        predict_frame(load_model(model_dir), _rows(unlabelled).head(), threshold=1.5)


def test_an_existing_output_is_refused_without_overwrite_and_kept_when_a_run_fails(model_dir, unlabelled, tiny_dataset,
                                                                                     tmp_path, client, caplog):
    out = tmp_path / "pred"
    out.mkdir()
    (out / "keep.txt").write_text("the user's")
    with pytest.raises(OutputError, match="exists. Pass --overwrite"):
        predict_dataset(model_dir, unlabelled, out, client=client)
    with pytest.raises(OutputError, match="would replace the input"):
        predict_dataset(model_dir, unlabelled, unlabelled, overwrite=True, client=client)
    # a file whose footer reads but whose data does not: the run fails on a worker
    broken = tmp_path / "broken"
    broken.mkdir()
    for i, f in enumerate(open_dataset(tiny_dataset).files):
        pq.write_table(pq.read_table(f), broken / f"b{i}.parquet", compression="snappy")
    raw = bytearray((broken / "b2.parquet").read_bytes())
    raw[8:len(raw) // 2] = b"\x00" * (len(raw) // 2 - 8)
    (broken / "b2.parquet").write_bytes(bytes(raw))
    caplog.set_level(logging.INFO, logger="metadask")
    with pytest.raises(DatasetError, match="Cannot read .*b2.parquet"):
        predict_dataset(model_dir, broken, out, overwrite=True, client=client)
    assert any(r.getMessage().startswith("Scoring ") for r in caplog.records)  # it failed while scoring
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "pred"]  # no half-written directory
    # with --overwrite, a complete run replaces it
    assert predict_dataset(model_dir, unlabelled, out, overwrite=True, client=client) == len(_rows(unlabelled))
    assert "keep.txt" not in {p.name for p in out.iterdir()}


def test_boosted_models_predict_through_inplace_predict_exactly_as_through_a_dmatrix(model_dir, unlabelled):
    model = load_model(model_dir)
    x = model.matrix(_rows(unlabelled))
    x[::7, 3] = np.nan  # missing values take the same branches
    bare = np.column_stack([b.predict(xgb.DMatrix(x), output_margin=True) for b in model.boosters])
    np.testing.assert_array_equal(booster_margins(model.boosters, x), bare)
    np.testing.assert_array_equal(model.predict_margin(x), bare)


def test_more_files_than_the_window_of_tasks_all_arrive_in_file_order(model_dir, unlabelled, tmp_path, client, caplog):
    src = tmp_path / "many"
    src.mkdir()
    for i, f in enumerate(sorted(unlabelled.glob("*.parquet"))):
        table = pq.read_table(f)
        step = -(-table.num_rows // 3)
        for j in range(3):  # 12 files; the window holds twice the cluster's 2 threads
            pq.write_table(table.slice(j * step, step), src / f"f{i}_{j}.parquet")
    caplog.set_level(logging.INFO, logger="metadask")
    out = tmp_path / "pred"
    rows = _rows(src)
    assert predict_dataset(model_dir, src, out, client=client) == len(rows)
    assert len(list(out.glob("part.*.parquet"))) == 12
    p = pd.read_parquet(out)
    np.testing.assert_array_equal(p["position"].to_numpy(), rows["position"].to_numpy())
    np.testing.assert_allclose(p["prob_donor"], load_model(model_dir).predict_proba(rows)[:, 1], rtol=1e-6, atol=1e-7)
    lines = [r.getMessage() for r in caplog.records if "] scored" in r.getMessage()]
    assert len(lines) == 12 and lines[-1].startswith("[12/12]")


def test_a_file_reads_into_the_float32_matrix_with_absent_kmers_as_zero(tiny_dataset):
    ds = open_dataset(tiny_dataset)
    drifted = next(c for c in ds.schema.kmer_columns if ds.schema.drift.get(c))
    file = ds.schema.drift[drifted][0]
    features = [drifted, "donor_score", "3mer_ZZZ"]  # a column the dataset never has reads as 0 too
    x, ids = ds.read_file_matrix(file, features, ["gene_id", "position"])
    df = ds.read_file(file, ["gene_id", "position", drifted, "donor_score"])
    assert x.dtype == np.float32 and x.flags["C_CONTIGUOUS"] and x.shape == (len(df), 3)
    np.testing.assert_array_equal(x[:, 0], 0)
    np.testing.assert_array_equal(x[:, 1], df["donor_score"].to_numpy(dtype=np.float32))
    np.testing.assert_array_equal(x[:, 2], 0)
    assert ids.column_names == ["gene_id", "position"] and ids.num_rows == len(df)
