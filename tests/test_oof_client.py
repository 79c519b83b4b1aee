"""Out-of-fold predictions kept on the workers, compact, part by part; calibration fitted on a bounded sample.

The client never holds the out-of-fold rows (see docs/analysis.md, "Out-of-fold predictions
stay on the workers"); ``python -m benchmarks client_memory`` measures its peak.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from metadask.analysis.metrics import fold_metrics, prediction_metrics
from metadask.config import TrainConfig
from metadask.dataset.schema import BASE_SCORE_COLUMNS, LABELS
from metadask.models.base import sigmoid
from metadask.results import OOF_COLUMNS, OOFParts, TrainingResult, compact_part, raw_proba
from metadask.strategies.tasks import margins_frame

GENES = [f"g{i:03d}" for i in range(12)]


def _part(genes: list[str], rows_per_gene: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = len(genes) * rows_per_gene
    y = rng.choice(3, n, p=[0.8, 0.1, 0.1]).astype(np.int8)
    meta = pd.DataFrame({"gene_id": np.repeat(genes, rows_per_gene), "position": np.tile(np.arange(rows_per_gene), len(genes))})
    for k, c in enumerate(("neither_score", "donor_score", "acceptor_score")):
        meta[c] = np.clip(rng.random(n) * 0.4 + (y == k) * 0.5, 0, 1)
    margins = rng.normal(size=(n, 3)) + 3.0 * (y[:, None] == np.arange(3)) - 1.5
    return margins_frame(meta, y, margins.astype(np.float32).astype(np.float64), "gene_id")


INDEX = pd.Index(GENES, dtype=object)


def _oof(parts: list[pd.DataFrame], folds: list[int]) -> pd.DataFrame:
    return pd.concat([compact_part(p, INDEX, f) for p, f in zip(parts, folds)], ignore_index=True)


def _in_order(futures, what):
    for i, f in enumerate(futures):
        yield i, f.result()


@pytest.fixture(scope="module")
def one_worker():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


def test_the_parts_stay_on_the_workers_compact_in_part_order_and_lose_nothing(one_worker):
    from distributed import Future

    parts = [_part(GENES[0:4], 50, 1), _part(GENES[4:8], 40, 2), _part(GENES[8:12], 30, 3)]
    futures = one_worker.scatter(parts, hash=False)
    oof = OOFParts.collect(one_worker, futures, [2, 0, 1], GENES, _in_order)
    assert all(isinstance(p, Future) for p in oof.parts) and oof.sizes == [200, 160, 120] and len(oof) == 480
    assert oof.folds == [2, 0, 1] and oof.fold_ids == [0, 1, 2] and "margin_donor" in oof and "prob_donor" not in oof
    frame = oof.frame()
    plain = pd.concat([p.assign(fold=f) for p, f in zip(parts, [2, 0, 1])], ignore_index=True)
    assert isinstance(frame["gene"].dtype, pd.CategoricalDtype) and list(frame["gene"].cat.categories) == GENES
    assert frame["gene"].astype(str).tolist() == plain["gene"].astype(str).tolist()
    dtypes = frame.dtypes.astype(str).to_dict()
    assert dtypes["label"] == "int8" and dtypes["fold"] == "int16" and dtypes["position"] == "int32"
    assert all(dtypes[f"margin_{c}"] == "float32" for c in LABELS)
    assert all(dtypes[c] == "float64" for c in BASE_SCORE_COLUMNS)
    for c in (*BASE_SCORE_COLUMNS, *(f"margin_{c}" for c in LABELS), "position", "label", "fold"):
        np.testing.assert_array_equal(frame[c].to_numpy(), plain[c].to_numpy())  # float32 margins lose nothing
    per_row = (frame.memory_usage(deep=True).sum() - frame["gene"].cat.categories.memory_usage(deep=True)) / len(frame)
    assert per_row <= 45  # codes 1, position 4, label 1, base 24, margins 12, fold 2 (+ the index's few bytes)
    by_fold = oof.map_folds(["gene", "label"], len, "rows per fold")
    assert by_fold == {0: 160, 1: 120, 2: 200}
    oof.release()
    assert oof.parts == [] and oof.client is None


def test_a_part_with_a_gene_outside_the_index_is_an_error():
    with pytest.raises(ValueError, match="not in the gene index"):
        compact_part(_part(["zzz"], 5, 1), INDEX[:2], 0)


def test_the_oof_file_is_written_a_chunk_at_a_time_in_the_plain_types_with_raw_probabilities(tmp_path, one_worker):
    from metadask.io import write_parquet_chunks

    frame = _oof([_part(GENES[:6], 40, 1), _part(GENES[6:], 40, 2)], [0, 1])
    oof = OOFParts.of(frame, one_worker)
    cols = [c for c in OOF_COLUMNS if c in oof or c.startswith("raw_")] + [f"margin_{c}" for c in LABELS]
    write_parquet_chunks(tmp_path / "oof.parquet", oof.tables(cols, chunk_rows=100))
    f = pq.ParquetFile(tmp_path / "oof.parquet")
    assert f.metadata.num_row_groups == 6  # two parts of 240 rows, 100 a table
    types = {n: str(f.schema_arrow.field(n).type) for n in f.schema_arrow.names}
    assert types["gene"] == "string" and types["position"] == types["fold"] == "int64" and types["raw_donor"] == "double"
    saved = pd.read_parquet(tmp_path / "oof.parquet")
    assert saved["gene"].tolist() == frame["gene"].astype(str).tolist()
    np.testing.assert_array_equal(saved[["raw_neither", "raw_donor", "raw_acceptor"]].to_numpy(), raw_proba(frame))
    np.testing.assert_allclose(raw_proba(frame)[:, 1], sigmoid(frame["margin_donor"].to_numpy()))
    oof.release(file=tmp_path / "oof.parquet")
    pd.testing.assert_frame_equal(oof.frame(), saved)  # once released, the frame is the file


def test_fold_metrics_on_categorical_genes_equal_those_on_gene_names():
    from metadask.training import calibrate

    oof = _oof([_part(GENES[:6], 60, 1), _part(GENES[6:], 60, 2)], [0, 1])
    result = TrainingResult("t", "", SimpleNamespace(features=[], calibrators=None), oof, pd.DataFrame(), {}, [], {}, pd.Series(dtype=int))
    calibrate(result, TrainConfig())
    oof = result.oof
    named = oof.assign(gene=oof["gene"].astype(str).astype(object))
    by_codes, by_names = fold_metrics(oof), fold_metrics(named)
    pd.testing.assert_frame_equal(by_codes, by_names)
    assert by_codes["n_genes"].tolist() == [6, 6]
    assert prediction_metrics(named)["n_genes"] == 12


def _big(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.choice(3, n, p=[0.9, 0.05, 0.05]).astype(np.int8)
    genes = np.array(GENES)[np.arange(n) * len(GENES) // n]
    meta = pd.DataFrame({"gene_id": genes, "position": np.arange(n)})
    for k, c in enumerate(("neither_score", "donor_score", "acceptor_score")):
        meta[c] = np.clip(rng.random(n) * 0.4 + (y == k) * 0.5, 0, 1)
    margins = 1.3 * (rng.normal(size=(n, 3)) + 2.0 * (y[:, None] == np.arange(3)) - 1.0)  # over-confident: calibration matters
    oof = compact_part(margins_frame(meta, y, margins, "gene_id"), INDEX, 0)
    oof["fold"] = (np.arange(n) * 4 // n).astype(np.int16)
    return oof


def test_calibration_sample_keeps_every_rare_row_and_weights_each_class_back_to_its_count():
    from metadask.training import calibration_keep, calibration_weights, draw_calibration_rows

    y = np.array([0] * 9000 + [1] * 600 + [2] * 400, dtype=np.int8)
    counts = np.bincount(y)
    assert calibration_keep(counts, cap=10_000) is None
    keep = calibration_keep(counts, cap=3000)
    np.testing.assert_allclose(keep, [2000 / 9000, 1.0, 1.0])  # water-filled: the rare classes whole
    part = pd.DataFrame({"label": y, "fold": np.zeros(len(y), np.int16), "row": np.arange(len(y))})
    drawn = pd.concat([draw_calibration_rows(part.iloc[:5000], 0, keep, 1, ["label", "row"]),
                       draw_calibration_rows(part.iloc[5000:], 1, keep, 1, ["label", "row"])])
    picked = drawn["label"].to_numpy()
    assert np.all(np.diff(drawn["row"].to_numpy()) > 0) and abs(len(drawn) - 3000) < 150
    assert (picked == 1).sum() == 600 and (picked == 2).sum() == 400
    assert abs((picked == 0).sum() - 2000) < 150  # each neither row kept with probability 2000 / 9000
    factor = calibration_weights(picked, counts)
    for k, count in enumerate((9000, 600, 400)):
        assert factor[picked == k].sum() == pytest.approx(count)
    again = draw_calibration_rows(part.iloc[:5000], 0, keep, 1, ["label", "row"])
    pd.testing.assert_frame_equal(again, drawn.iloc[:len(again)])  # seeded by (seed, part)
    assert draw_calibration_rows(part, 0, None, 1, ["label", "row"]).equals(part[["label", "row"]])  # below the cap: every row


def test_calibrators_fitted_on_the_bounded_sample_match_those_fitted_on_every_row(monkeypatch, caplog):
    import metadask.training as training

    full, sampled = _big(60_000), _big(60_000)

    def calibrated(oof: pd.DataFrame) -> TrainingResult:
        r = TrainingResult("t", "", SimpleNamespace(features=[], calibrators=None), oof, pd.DataFrame(), {}, [], {}, pd.Series(dtype=int))
        training.calibrate(r, TrainConfig())
        return r

    exact = calibrated(full)
    monkeypatch.setattr(training, "CALIBRATION_FIT_ROWS", 20_000)
    monkeypatch.setattr(training, "APPLY_CHUNK_ROWS", 7_000)  # several chunks per fold
    with caplog.at_level(logging.INFO, logger="metadask"):
        approx = calibrated(sampled)
    assert re.search(r"fitted on a label-stratified weighted sample of (19|20),\d{3} \(", caplog.text)
    for a, b in zip(exact.model.calibrators, approx.model.calibrators):
        assert a.method == b.method == "platt"
        assert b.params["a"] == pytest.approx(a.params["a"], rel=0.05) and b.params["b"] == pytest.approx(a.params["b"], abs=0.1)
    p_exact = exact.oof[[f"prob_{c}" for c in LABELS]].to_numpy(dtype=np.float64)
    p_approx = approx.oof[[f"prob_{c}" for c in LABELS]].to_numpy(dtype=np.float64)
    diff = np.abs(p_exact - p_approx)  # cross-fitted on ~15,000 sampled rows instead of 45,000
    print("calibration sample vs every row: mean", diff.mean(), "p99", np.quantile(diff, 0.99))
    assert diff.mean() < 0.005 and np.quantile(diff, 0.99) < 0.03
    np.testing.assert_allclose(p_approx.sum(axis=1), 1.0, atol=1e-6)
    assert sorted(approx.fold_calibrators) == [0, 1, 2, 3]


def test_the_evaluation_computed_on_a_worker_equals_the_one_computed_on_the_client(tmp_path, one_worker):
    from metadask.analysis.evaluation import write_evaluation
    from metadask.training import calibrate

    oof = _big(30_000)
    result = TrainingResult("t", "", SimpleNamespace(features=[], calibrators=None), oof, pd.DataFrame(), {}, [], {}, pd.Series(dtype=int))
    calibrate(result, TrainConfig())
    result.fold_metrics = fold_metrics(result.oof_parts)
    (tmp_path / "here").mkdir()
    (tmp_path / "there").mkdir()
    here = write_evaluation(tmp_path / "here", result, "platt")
    local = result.oof
    result.oof_parts = OOFParts.of(local, one_worker)
    there = write_evaluation(tmp_path / "there", result, "platt")
    pd.testing.assert_frame_equal(fold_metrics(result.oof_parts), result.fold_metrics)
    assert here[0] == there[0]
    pd.testing.assert_frame_equal(here[1], there[1])
    for name in ("meta_evaluation_summary.json", "base_vs_meta_performance.tsv", "ensemble_cv_results.csv"):
        assert (tmp_path / "here" / name).read_bytes() == (tmp_path / "there" / name).read_bytes()
    assert set(here[2]) == set(there[2]) == {"curves", "reliability", "ece", "confusion"}
    assert here[2]["ece"] == there[2]["ece"]


def test_the_batch_ensembles_cv_figures_are_the_same_scored_on_workers_or_on_the_client(one_worker):
    from metadask.strategies.batch_ensemble import ensemble_cv_results

    result = TrainingResult("batch-ensemble", "", SimpleNamespace(features=[], calibrators=None), _big(20_000), pd.DataFrame(),
                            {}, [], {}, pd.Series(dtype=int), details={"ensemble_cv": [{"fold": 2, "members_used": 3}]})
    here = ensemble_cv_results(result)
    result.oof_parts = OOFParts.of(result.oof, one_worker)
    there = ensemble_cv_results(result)
    pd.testing.assert_frame_equal(here, there)
    assert here["fold"].tolist() == [0, 1, 2, 3] and here["n_genes"].tolist() == [3, 3, 3, 3]
    assert here.loc[2, "members_used"] == 3 and set(here["probabilities"]) == {"uncalibrated"}


@pytest.mark.parametrize("strategy", ["single", "batch-ensemble"])
def test_a_training_run_keeps_the_out_of_fold_rows_on_the_workers(strategy, tiny_dataset, client, tmp_path, monkeypatch):
    """Collection, calibration, metrics, the evaluation and the OOF file all run where the parts are."""
    import metadask

    seen: dict[str, list[Any]] = {"built_here": [], "transformed": []}
    frame, transform = OOFParts.frame, OOFParts.transform

    def watched_frame(self):
        if self.parts and self.client is not None:
            seen["built_here"].append(len(self))
        return frame(self)

    def watched_transform(self, *args, **kwargs):
        seen["transformed"].append({type(p).__name__ for p in self.parts})
        return transform(self, *args, **kwargs)

    monkeypatch.setattr(OOFParts, "frame", watched_frame)
    monkeypatch.setattr(OOFParts, "transform", watched_transform)
    options = {"max_genes_per_batch": 20} if strategy == "batch-ensemble" else {}
    result = metadask.train(str(tiny_dataset), tmp_path / "run", client=client, strategy=strategy, n_folds=3,
                            n_estimators=5, shap_sample=200, seed=0, **options)
    assert seen["built_here"] == [], "the client built the out-of-fold frame during the run"
    assert seen["transformed"] == [{"Future"}]  # calibrated on the workers
    assert result.oof_parts.parts == [] and result.oof_parts.file == tmp_path / "run" / "oof_predictions.parquet"
    saved = pd.read_parquet(tmp_path / "run" / "oof_predictions.parquet")
    pd.testing.assert_frame_equal(result.oof, saved)  # after the run, the frame is the file
    from metadask.dataset.index import build_gene_index
    from metadask.dataset.source import open_dataset

    assert len(saved) == build_gene_index(open_dataset(str(tiny_dataset))).n_rows
    np.testing.assert_allclose(saved[[f"prob_{c}" for c in LABELS]].sum(axis=1), 1.0, atol=1e-6)
    assert (tmp_path / "run" / "meta_evaluation_summary.json").is_file() and (tmp_path / "run" / "gene_cv_metrics.csv").is_file()
