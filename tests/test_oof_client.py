"""The client's out-of-fold frame: compact, assembled without a second copy, calibrated on a bounded sample.

What the client holds grows with the rows only through this frame (see docs/analysis.md,
"Out-of-fold predictions on the client"); ``python -m benchmarks client_memory`` measures it.
"""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from metadask.analysis.metrics import fold_metrics, prediction_metrics
from metadask.config import TrainConfig
from metadask.dataset.schema import BASE_SCORE_COLUMNS, LABELS
from metadask.models.base import sigmoid
from metadask.results import OOF_COLUMNS, OOFAssembler, TrainingResult, oof_tables, raw_proba
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


def _oof(parts: list[pd.DataFrame], folds: list[int], order: list[int] | None = None) -> pd.DataFrame:
    asm = OOFAssembler(GENES, len(parts))
    for i in order or range(len(parts)):
        asm.add(i, parts[i], folds[i])
    return asm.frame()


def test_the_frame_is_compact_in_part_order_whatever_the_arrival_order_and_loses_nothing():
    parts = [_part(GENES[0:4], 50, 1), _part(GENES[4:8], 40, 2), _part(GENES[8:12], 30, 3)]
    late = _oof(parts, [0, 1, 2], order=[2, 0, 1])
    assert late.equals(_oof(parts, [0, 1, 2]))
    plain = pd.concat([p.assign(fold=f) for p, f in zip(parts, [0, 1, 2])], ignore_index=True)
    assert isinstance(late["gene"].dtype, pd.CategoricalDtype) and list(late["gene"].cat.categories) == GENES
    assert late["gene"].astype(str).tolist() == plain["gene"].astype(str).tolist()
    dtypes = late.dtypes.astype(str).to_dict()
    assert dtypes["label"] == "int8" and dtypes["fold"] == "int16" and dtypes["position"] == "int32"
    assert all(dtypes[f"margin_{c}"] == "float32" for c in LABELS)
    assert all(dtypes[c] == "float64" for c in BASE_SCORE_COLUMNS)
    for c in (*BASE_SCORE_COLUMNS, *(f"margin_{c}" for c in LABELS), "position", "label", "fold"):
        np.testing.assert_array_equal(late[c].to_numpy(), plain[c].to_numpy())  # float32 margins lose nothing
    per_row = (late.memory_usage(deep=True).sum() - late["gene"].cat.categories.memory_usage(deep=True)) / len(late)
    assert per_row <= 45  # codes 1, position 4, label 1, base 24, margins 12, fold 2 (+ the index's few bytes)


def test_a_part_with_a_gene_outside_the_index_or_a_part_that_never_came_is_an_error():
    asm = OOFAssembler(GENES[:2], 2)
    with pytest.raises(ValueError, match="not in the gene index"):
        asm.add(0, _part(["zzz"], 5, 1), 0)
    asm.add(0, _part(GENES[:2], 5, 1), 0)
    with pytest.raises(ValueError, match="1 out-of-fold parts never arrived"):
        asm.frame()


def test_the_oof_file_has_the_plain_types_and_raw_probabilities_from_the_margins(tmp_path):
    from metadask.io import write_parquet_chunks

    oof = _oof([_part(GENES[:6], 40, 1), _part(GENES[6:], 40, 2)], [0, 1])
    cols = [c for c in OOF_COLUMNS if c in oof or c.startswith("raw_")] + [f"margin_{c}" for c in LABELS]
    write_parquet_chunks(tmp_path / "oof.parquet", oof_tables(oof, cols, chunk_rows=100))
    f = pq.ParquetFile(tmp_path / "oof.parquet")
    assert f.metadata.num_row_groups == 5  # 480 rows, 100 a table
    types = {n: str(f.schema_arrow.field(n).type) for n in f.schema_arrow.names}
    assert types["gene"] == "string" and types["position"] == types["fold"] == "int64" and types["raw_donor"] == "double"
    saved = pd.read_parquet(tmp_path / "oof.parquet")
    assert saved["gene"].tolist() == oof["gene"].astype(str).tolist()
    np.testing.assert_array_equal(saved[["raw_neither", "raw_donor", "raw_acceptor"]].to_numpy(), raw_proba(oof))
    np.testing.assert_allclose(raw_proba(oof)[:, 1], sigmoid(oof["margin_donor"].to_numpy()))


def test_fold_metrics_on_categorical_genes_equal_those_on_gene_names():
    from metadask.training import calibrate

    oof = _oof([_part(GENES[:6], 60, 1), _part(GENES[6:], 60, 2)], [0, 1])
    result = TrainingResult("t", "", SimpleNamespace(features=[], calibrators=None), oof, pd.DataFrame(), {}, [], {}, pd.Series(dtype=int))
    calibrate(result, TrainConfig())
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
    part = margins_frame(meta, y, margins, "gene_id")
    asm = OOFAssembler(GENES, 1)
    asm.add(0, part, 0)
    oof = asm.frame()
    oof["fold"] = (np.arange(n) * 4 // n).astype(np.int16)
    return oof


def test_calibration_sample_keeps_every_rare_row_and_weights_each_class_back_to_its_count():
    from metadask.training import calibration_sample

    y = np.array([0] * 9000 + [1] * 600 + [2] * 400)
    assert calibration_sample(y, cap=10_000) == (None, None)
    rows, factor = calibration_sample(y, cap=3000, seed=1)
    picked = y[rows]
    assert np.all(np.diff(rows) > 0) and abs(len(rows) - 3000) < 150
    assert (picked == 1).sum() == 600 and (picked == 2).sum() == 400  # water-filled: the rare classes whole
    assert abs((picked == 0).sum() - 2000) < 150  # each neither row kept with probability 2000 / 9000
    for k, count in enumerate((9000, 600, 400)):
        assert factor[picked == k].sum() == pytest.approx(count)
    again, _ = calibration_sample(y, cap=3000, seed=1)
    np.testing.assert_array_equal(rows, again)


def test_calibrators_fitted_on_the_bounded_sample_match_those_fitted_on_every_row(monkeypatch, caplog):
    import metadask.training as training

    full, sampled = _big(60_000), _big(60_000)

    def calibrated(oof: pd.DataFrame) -> TrainingResult:
        r = TrainingResult("t", "", SimpleNamespace(features=[], calibrators=None), oof, pd.DataFrame(), {}, [], {}, pd.Series(dtype=int))
        training.calibrate(r, TrainConfig())
        return r

    exact = calibrated(full)
    monkeypatch.setattr(training, "CALIBRATION_FIT_ROWS", 20_000)
    monkeypatch.setattr(training, "APPLY_CHUNK_ROWS", 7_000)  # several chunks per fold and per draw
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


def test_the_evaluation_computed_on_a_worker_equals_the_one_computed_on_the_client(tmp_path):
    from distributed import Client, LocalCluster

    from metadask.analysis.evaluation import write_evaluation
    from metadask.training import calibrate

    oof = _big(30_000)
    result = TrainingResult("t", "", SimpleNamespace(features=[], calibrators=None), oof, pd.DataFrame(), {}, [], {}, pd.Series(dtype=int))
    calibrate(result, TrainConfig())
    result.fold_metrics = fold_metrics(oof)
    (tmp_path / "here").mkdir()
    (tmp_path / "there").mkdir()
    here = write_evaluation(tmp_path / "here", result, "platt")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        there = write_evaluation(tmp_path / "there", result, "platt", client=client)
        worker_folds = fold_metrics(oof, client)
    pd.testing.assert_frame_equal(worker_folds, result.fold_metrics)
    assert here[0] == there[0]
    pd.testing.assert_frame_equal(here[1], there[1])
    for name in ("meta_evaluation_summary.json", "base_vs_meta_performance.tsv", "ensemble_cv_results.csv"):
        assert (tmp_path / "here" / name).read_bytes() == (tmp_path / "there" / name).read_bytes()
    assert set(here[2]) == set(there[2]) == {"curves", "reliability", "ece", "confusion"}
    assert here[2]["ece"] == there[2]["ece"]


def test_the_batch_ensembles_cv_figures_are_the_same_scored_on_workers_or_on_the_client():
    from distributed import Client, LocalCluster

    from metadask.strategies.batch_ensemble import ensemble_cv_results

    result = TrainingResult("batch-ensemble", "", SimpleNamespace(features=[], calibrators=None), _big(20_000), pd.DataFrame(),
                            {}, [], {}, pd.Series(dtype=int), details={"ensemble_cv": [{"fold": 2, "members_used": 3}]})
    here = ensemble_cv_results(result)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        there = ensemble_cv_results(result, client)
    pd.testing.assert_frame_equal(here, there)
    assert here["fold"].tolist() == [0, 1, 2, 3] and here["n_genes"].tolist() == [3, 3, 3, 3]
    assert here.loc[2, "members_used"] == 3 and set(here["probabilities"]) == {"uncalibrated"}
