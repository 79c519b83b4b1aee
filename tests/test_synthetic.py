"""Tests of the synthetic dataset generator (metadask.dataset.synthetic)."""

from __future__ import annotations

import csv
import pathlib
import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from metadask.dataset.synthetic import (
    LABELS,
    LEAKY_COLUMNS,
    NEAR_CONSTANT_COLUMNS,
    dataset_schema,
    make_dataset,
)
from metadask.errors import ConfigError, MetadaskError, OutputError

KMER = re.compile(r"^\d+mer_[ACGTN]+$")
METADATA = ["gene_id", "transcript_id", "gene_name", "chrom", "strand", "position",
            "absolute_position", "window_start", "window_end", "gene_type", "pred_type",
            "true_position", "predicted_position", "splice_type", "score"]
EPS = 1e-10


def _files(master: pathlib.Path) -> list[pathlib.Path]:
    return sorted(master.glob("*.parquet"))


def _read_all(master: pathlib.Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(f) for f in _files(master)], ignore_index=True)


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return make_dataset(tmp_path_factory.mktemp("synth") / "ds", 100, seed=7, genes_per_file=50)


@pytest.fixture(scope="module")
def frame(master: pathlib.Path) -> pd.DataFrame:
    return _read_all(master)


def _binary_f1(y: np.ndarray, pred: np.ndarray) -> float:
    tp = float(np.sum(y & pred))
    return 2 * tp / (2 * tp + np.sum(~y & pred) + np.sum(y & ~pred))


def test_dataset_has_upstream_layout_with_whole_genes_per_file_and_a_manifest(
        master: pathlib.Path, frame: pd.DataFrame) -> None:
    assert master.name == "master"
    assert [f.name for f in _files(master)] == ["batch_00000.parquet", "batch_00001.parquet"]
    assert not [p for p in master.iterdir() if p.name.startswith(".")]  # no temporary files left
    with open(master / "gene_manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["gene_id", "gene_name", "file", "n_rows", "n_donor", "n_acceptor"]
    assert [r["gene_id"] for r in rows] == [f"SYN{i:06d}" for i in range(1, 101)]
    for f in _files(master):
        genes = pq.read_table(f, columns=["gene_id", "splice_type"]).to_pandas()
        listed = {r["gene_id"]: r for r in rows if r["file"] == f.name}
        assert len(listed) == 50 and set(genes.gene_id) == set(listed)
        for gene_id, g in genes.groupby("gene_id"):
            r = listed[gene_id]
            assert int(r["n_rows"]) == len(g)
            assert int(r["n_donor"]) == (g.splice_type == "donor").sum()
            assert int(r["n_acceptor"]) == (g.splice_type == "acceptor").sum()


def test_columns_mirror_the_real_schema_plus_the_leaky_columns(master: pathlib.Path) -> None:
    schema = pq.read_schema(_files(master)[0])
    expected = dataset_schema((3,))
    assert [(f.name, f.type) for f in schema] == [(f.name, f.type) for f in expected]
    assert schema.names[-2:] == list(LEAKY_COLUMNS)
    assert str(schema.field("has_tx_info").type) == "int32"
    assert str(schema.field("missing_transcript_feats").type) == "int8"
    assert str(schema.field("donor_is_local_peak").type) == "int64"
    assert sum(bool(KMER.match(c)) for c in schema.names) == 64


def test_each_gene_has_between_400_and_1300_rows_sorted_by_position(frame: pd.DataFrame) -> None:
    sizes = frame.groupby("gene_id").size()
    assert sizes.between(400, 1300).all()
    assert frame.groupby("gene_id").position.apply(lambda p: p.is_monotonic_increasing).all()


def test_label_mix_is_about_90_percent_neither_and_5_percent_each_site_type(
        frame: pd.DataFrame) -> None:
    share = frame.splice_type.value_counts(normalize=True)
    assert set(share.index) == set(LABELS)
    assert 0.87 <= share["neither"] <= 0.93
    assert 0.035 <= share["donor"] <= 0.065 and 0.035 <= share["acceptor"] <= 0.065


def test_metadata_and_bookkeeping_columns_are_consistent(frame: pd.DataFrame) -> None:
    site = frame.splice_type != "neither"
    assert frame.true_position.isna().eq(~site).all()
    assert (frame.true_position[site] == frame.position[site]).all()
    called = frame[["donor_score", "acceptor_score"]].max(axis=1) >= 0.5
    assert frame.predicted_position.isna().eq(~called).all()
    assert set(frame.pred_type[site]) <= {"TP", "FN"}
    assert set(frame.pred_type[~site]) <= {"FP", "TN"}
    assert np.allclose(frame.score, frame[["donor_score", "acceptor_score"]].max(axis=1))
    assert (frame.distance_to_start + frame.distance_to_end == frame.transcript_length - 1).all()
    assert (frame.window_end - frame.window_start == 100).all()
    assert (frame.sequence_length == 101).all() and frame.gc_content.between(0, 1).all()
    assert (frame.n_splice_sites == 2 * (frame.num_exons - 1)).all()
    assert (frame.gene_end - frame.gene_start + 1 == frame.gene_length).all()
    assert set(frame.strand) == {"+", "-"} and frame.chrom.str.match(r"^chr[1-5]$").all()


def test_kmer_counts_cover_every_kmer_of_the_101_nt_window(frame: pd.DataFrame) -> None:
    kmers = [c for c in frame.columns if KMER.match(c)]
    assert np.allclose(frame[kmers].fillna(0).sum(axis=1), 99)


def test_probability_and_context_features_follow_the_documented_formulas(
        frame: pd.DataFrame) -> None:
    d, a, n = frame.donor_score, frame.acceptor_score, frame.neither_score
    assert np.allclose(d + a + n, 1.0)
    assert np.allclose(frame.splice_probability, (d + a) / (d + a + n + EPS))
    assert np.allclose(frame.score_difference_ratio, (d - a) / (d + a + EPS))
    assert np.allclose(frame.splice_neither_logodds, np.log(d + a + EPS) - np.log(n + EPS))
    xm1, xp1 = d - frame.donor_diff_m1, d - frame.donor_diff_p1
    xm2, xp2 = d - frame.donor_diff_m2, d - frame.donor_diff_p2
    assert np.allclose(frame.donor_surge_ratio, d / (xm1 + xp1 + EPS), rtol=1e-6, atol=1e-6)
    assert np.allclose(frame.donor_weighted_context,
                       0.1 * xm2 + 0.2 * xm1 + 0.4 * d + 0.2 * xp1 + 0.1 * xp2)
    assert np.allclose(frame.donor_second_derivative, 2 * d - xm1 - xp1)
    peak = (d > xm1) & (d > xp1) & (d >= 0.001)
    assert (frame.donor_is_local_peak == peak.astype(int)).mean() > 0.999  # float round-off
    four = frame[[f"context_score_{k}" for k in ("m2", "m1", "p1", "p2")]]
    assert np.allclose(frame.context_neighbor_mean, four.mean(axis=1))
    assert np.allclose(frame.type_signal_difference,
                       frame.donor_signal_strength - frame.acceptor_signal_strength)
    drift = [c for c in frame.columns if KMER.match(c) and "N" in c]  # NaN where absent
    numeric = frame.select_dtypes("number").drop(
        columns=["true_position", "predicted_position", *drift])
    assert np.isfinite(numeric.to_numpy(dtype=float)).all()


def test_qc_flags_are_near_constant(frame: pd.DataFrame) -> None:
    assert (frame.has_gene_info == 1).all()
    assert 0.995 < frame.has_tx_info.mean() < 1.0 or (frame.has_tx_info == 1).all()
    assert (frame.missing_transcript_feats == 1 - frame.has_tx_info).all()
    assert set(NEAR_CONSTANT_COLUMNS) <= set(frame.columns)


def test_leaky_columns_correlate_at_least_095_with_a_label_indicator(frame: pd.DataFrame) -> None:
    targets = {"splice": frame.splice_type != "neither"}
    targets.update({lab: frame.splice_type == lab for lab in LABELS})
    for col in LEAKY_COLUMNS:
        best = max(abs(np.corrcoef(frame[col], t.astype(float))[0, 1]) for t in targets.values())
        assert best >= 0.95, col


def test_n_kmer_columns_appear_in_some_later_files_only(master: pathlib.Path) -> None:
    first, second = (pq.read_table(f).to_pandas() for f in _files(master))
    assert not [c for c in first.columns if KMER.match(c) and "N" in c]
    n_cols = [c for c in second.columns if KMER.match(c) and "N" in c]
    assert n_cols and all(second[c].sum() > 0 for c in n_cols)


def test_no_n_kmers_without_drift_and_genes_do_not_depend_on_files(tmp_path: pathlib.Path) -> None:
    one = make_dataset(tmp_path / "a", 4, genes_per_file=4, n_kmer_drift=False)
    two = make_dataset(tmp_path / "b", 4, genes_per_file=2, n_kmer_drift=False)
    assert len(_files(one)) == 1 and len(_files(two)) == 2
    assert _read_all(one).equals(_read_all(two))
    assert not [c for c in _read_all(two).columns if "N" in c.split("_")[-1] and KMER.match(c)]


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path: pathlib.Path) -> None:
    kw = dict(genes_per_file=2, kmer_sizes=(2, 3))
    a = make_dataset(tmp_path / "a", 5, seed=3, **kw)
    b = make_dataset(tmp_path / "b", 5, seed=3, **kw)
    c = make_dataset(tmp_path / "c", 5, seed=4, **kw)
    for fa, fb in zip(_files(a), _files(b), strict=True):
        assert pq.read_table(fa).equals(pq.read_table(fb))
        assert fa.read_bytes() == fb.read_bytes()
    assert (a / "gene_manifest.csv").read_bytes() == (b / "gene_manifest.csv").read_bytes()
    assert not pq.read_table(_files(a)[0]).equals(pq.read_table(_files(c)[0]))


def test_base_scores_sum_to_one_and_base_binary_f1_is_realistic(frame: pd.DataFrame) -> None:
    scores = frame[["donor_score", "acceptor_score", "neither_score"]]
    assert np.allclose(scores.sum(axis=1), 1.0) and (scores >= 0).all().all()
    y = (frame.splice_type != "neither").to_numpy()
    pred = (frame.donor_score + frame.acceptor_score >= 0.5).to_numpy()
    assert 0.75 <= _binary_f1(y, pred) <= 0.92
    assert 0.002 <= pred[~y].mean() <= 0.03  # false-positive rate on neither rows
    klass = scores.to_numpy().argmax(axis=1)
    assert (klass[y] == frame.splice_type[y].map({"donor": 0, "acceptor": 1})).mean() > 0.7


def test_a_quick_xgboost_meta_model_beats_the_base_model_on_held_out_genes(
        frame: pd.DataFrame) -> None:
    xgb = pytest.importorskip("xgboost")
    features = [c for c in frame.columns if c not in METADATA and c not in LEAKY_COLUMNS]
    X = frame[features].fillna(0.0).to_numpy(np.float32)
    y = (frame.splice_type != "neither").to_numpy()
    genes = sorted(frame.gene_id.unique())
    train = frame.gene_id.isin(genes[:60]).to_numpy()
    model = xgb.XGBClassifier(n_estimators=150, max_depth=6, learning_rate=0.1,
                              tree_method="hist", n_jobs=2, random_state=0)
    model.fit(X[train], y[train])
    meta = model.predict_proba(X[~train])[:, 1] >= 0.5
    base = (frame.donor_score + frame.acceptor_score).to_numpy()[~train] >= 0.5
    f1_base, f1_meta = _binary_f1(y[~train], base), _binary_f1(y[~train], meta)
    assert f1_meta >= f1_base + 0.04, (f1_base, f1_meta)


def test_3_and_5_mers_for_20_genes_give_about_1100_features(tmp_path: pathlib.Path) -> None:
    master = make_dataset(tmp_path / "k35", 20, kmer_sizes=(5, 3), genes_per_file=10)
    schema = pq.read_schema(_files(master)[0])
    acgt = [c for c in schema.names if KMER.match(c) and "N" not in c]
    assert len(acgt) == 64 + 1024
    assert acgt[0] == "3mer_AAA" and acgt[64] == "5mer_AAAAA"
    assert len(schema.names) == len(dataset_schema((3, 5)).names)


def test_progress_is_reported_after_each_file(tmp_path: pathlib.Path) -> None:
    calls: list[tuple[int, int]] = []
    make_dataset(tmp_path / "p", 5, genes_per_file=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_refuses_a_non_empty_output_directory_unless_overwrite(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "out"
    make_dataset(out, 3, genes_per_file=1)
    with pytest.raises(OutputError, match="overwrite"):
        make_dataset(out, 2)
    master = make_dataset(out, 2, genes_per_file=1, overwrite=True)
    assert [f.name for f in _files(master)] == ["batch_00000.parquet", "batch_00001.parquet"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError):
        make_dataset(tmp_path / "file", 1)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert make_dataset(empty, 1).is_dir()


@pytest.mark.parametrize("kwargs, option", [
    ({"n_genes": 0}, "n_genes"),
    ({"n_genes": 2.5}, "n_genes"),
    ({"genes_per_file": 0}, "genes_per_file"),
    ({"kmer_sizes": (7,)}, "kmer_sizes"),
    ({"kmer_sizes": (0, 3)}, "kmer_sizes"),
    ({"kmer_sizes": ()}, "kmer_sizes"),
    ({"kmer_sizes": "3"}, "kmer_sizes"),
    ({"seed": -1}, "seed"),
])
def test_bad_arguments_raise_config_error_naming_the_option(
        tmp_path: pathlib.Path, kwargs: dict[str, object], option: str) -> None:
    args = {"n_genes": 2, **kwargs}
    with pytest.raises(ConfigError, match=f"'{option}' option") as info:
        make_dataset(tmp_path / "bad", **args)  # type: ignore[arg-type]
    assert isinstance(info.value, MetadaskError)
    assert not (tmp_path / "bad").exists()
