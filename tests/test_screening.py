"""Global feature screening: rules, protected columns, user lists, reuse, rows read, outputs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metadask.config import TrainConfig
from metadask.dataset import build_gene_index, open_dataset, read_sample, representative_genes
from metadask.dataset.synthetic import LEAKY_COLUMNS, NEAR_CONSTANT_COLUMNS
from metadask.errors import ConfigError, DatasetError
from metadask.screening import (
    ANNOTATION_ARTIFACTS,
    EXCLUDED_FILE,
    TABLE_FILE,
    load_exclusions,
    parse_exclude_option,
    screen_features,
    screen_sample,
    summary_lines,
)
from metadask.screening import screen as screen_module


# -- helpers ------------------------------------------------------------------------------
def make_frame(n_genes: int = 40, rows_per_gene: int = 30, seed: int = 0) -> pd.DataFrame:
    """Rows of ``n_genes`` genes: 2 donors, 2 acceptors, the rest neither; weakly informative scores."""
    rng = np.random.default_rng(seed)
    parts = []
    for g in range(n_genes):
        labels = np.array(["donor"] * 2 + ["acceptor"] * 2 + ["neither"] * (rows_per_gene - 4), dtype=object)
        rng.shuffle(labels)
        parts.append(pd.DataFrame({"gene_id": f"G{g:04d}", "position": np.arange(rows_per_gene), "splice_type": labels}))
    df = pd.concat(parts, ignore_index=True)
    donor, acceptor = (df["splice_type"] == "donor").to_numpy(), (df["splice_type"] == "acceptor").to_numpy()
    n = len(df)
    df["donor_score"] = 0.6 * rng.uniform(size=n) + 0.4 * donor
    df["acceptor_score"] = 0.6 * rng.uniform(size=n) + 0.4 * acceptor
    df["neither_score"] = 1 - np.maximum(df["donor_score"], df["acceptor_score"])
    df["feat_a"] = rng.normal(size=n)
    df["feat_b"] = rng.normal(size=n) + 0.5 * donor
    return df


def write_dataset(root: Path, df: pd.DataFrame, genes_per_file: int = 10) -> Path:
    """Write ``df`` as parquet files of whole genes (sorted) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    genes = sorted(df["gene_id"].unique())
    for i in range(0, len(genes), genes_per_file):
        part = df[df["gene_id"].isin(genes[i:i + genes_per_file])]
        part.to_parquet(root / f"batch_{i // genes_per_file:05d}.parquet", index=False)
    return root


def screen(path: Path, **options) -> tuple:
    dataset = open_dataset(path)
    index = build_gene_index(dataset)
    return screen_features(dataset, index, TrainConfig.from_options(**options)), dataset, index


def is_site(df: pd.DataFrame) -> np.ndarray:
    return (df["splice_type"] != "neither").to_numpy()


@pytest.fixture(scope="module")
def tiny_result(tiny_dataset):
    return screen(tiny_dataset)


# -- the synthetic generator ----------------------------------------------------------------
def test_the_synthetic_leaky_columns_are_excluded_for_leakage_on_the_cluster(tiny_dataset, client):
    dataset = open_dataset(tiny_dataset)
    index = build_gene_index(dataset)
    result = screen_features(dataset, index, TrainConfig(), client=client)
    for name in LEAKY_COLUMNS:
        assert result.excluded[name].startswith("leakage: |"), result.excluded[name]
        assert name not in result.features
    assert "with splice-vs-neither >= 0.95" in result.excluded["is_annotated_site"]
    assert "with donor >= 0.95" in result.excluded["is_annotated_donor"]


def test_the_annotation_artifacts_are_excluded_by_default_and_are_not_read(tiny_result):
    result, _, _ = tiny_result
    for name in ("has_tx_info", "missing_transcript_feats", "has_gene_info", "distance_to_start", "distance_to_end"):
        assert result.excluded[name] == "annotation artifact (default exclusion list)"
        row = result.table.set_index("feature").loc[name]
        assert row["decision"] == "excluded" and np.isnan(row["pearson"])  # never read


def test_without_the_default_list_has_gene_info_is_constant_and_the_qc_flags_near_constant(tiny_dataset):
    result, _, _ = screen(tiny_dataset, default_exclusions=False)
    assert result.excluded["has_gene_info"].startswith("constant")
    for name in NEAR_CONSTANT_COLUMNS:
        assert name in result.excluded and "constant" in result.excluded[name]
    assert {"distance_to_start", "distance_to_end"} <= set(result.features)


def test_keep_features_wins_over_the_default_exclusion_list(tiny_dataset):
    result, _, _ = screen(tiny_dataset, keep_features=("distance_to_start",))
    assert "distance_to_start" in result.features
    assert result.excluded["distance_to_end"] == "annotation artifact (default exclusion list)"


def test_a_reused_exclusion_list_still_applies_the_default_list(tmp_path):
    df = make_frame()
    df["distance_to_start"] = df["position"].astype(float)
    path = write_dataset(tmp_path / "d", df)
    listing = tmp_path / "excluded.txt"
    listing.write_text("feat_a\tuser exclusion\n")
    result, _, _ = screen(path, screening_from=str(listing))
    assert result.excluded["distance_to_start"] == "annotation artifact (default exclusion list)"
    assert "feat_a" in result.excluded and "feat_b" in result.features


# -- label copies that no correlation threshold catches -------------------------------------
def test_a_non_monotone_copy_of_the_label_is_excluded_by_the_gene_grouped_auc_rule(tiny_dataset, tmp_path, client):
    import shutil

    from metadask.testing import add_columns, label_copy

    path = tmp_path / "leaky"
    shutil.copytree(tiny_dataset, path)
    add_columns(path, lambda frame: {"label_echo": label_copy(frame, seed=3)})
    dataset = open_dataset(path)
    result = screen_features(dataset, build_gene_index(dataset), TrainConfig(), client=client)
    row = result.table.set_index("feature").loc["label_echo"]
    assert max(abs(row["pearson"]), abs(row["spearman"])) < 0.95  # the correlation rule misses it
    assert result.excluded["label_echo"].startswith("leakage: gene-grouped AUC"), result.excluded["label_echo"]
    assert row["grouped_auc"] > 0.999
    # the base scores and the features derived from them stay in
    assert {"donor_score", "acceptor_score", "neither_score"} <= set(result.features)
    assert not any(r.startswith("leakage: gene-grouped") for f, r in result.excluded.items() if f != "label_echo")


def test_a_feature_that_memorises_each_genes_labels_is_not_called_a_label_copy(tmp_path):
    from metadask.testing import gene_memoriser

    df = make_frame(n_genes=60)
    df["memory"] = gene_memoriser(df)
    df["echo"] = np.select([df["splice_type"] == "donor", df["splice_type"] == "acceptor"], [1.0, -1.0], 0.0)
    result, _, _ = screen(write_dataset(tmp_path / "d", df))
    table = result.table.set_index("feature")
    assert "memory" in result.features and table.loc["memory", "grouped_auc"] < 0.8
    assert result.excluded["echo"].startswith("leakage: gene-grouped AUC 1.000")


def test_a_lower_leakage_auc_catches_a_noisier_copy_and_the_default_does_not(tmp_path):
    from metadask.testing import label_copy

    df = make_frame(n_genes=60)
    df["noisy_echo"] = label_copy(df, noise=0.3)
    path = write_dataset(tmp_path / "d", df)
    assert "noisy_echo" in screen(path)[0].features
    assert screen(path, leakage_auc=0.95)[0].excluded["noisy_echo"].startswith("leakage: gene-grouped AUC")


def test_leaky_metadata_is_listed_as_excluded_but_is_never_a_feature(tiny_result):
    result, dataset, _ = tiny_result
    for name in ("pred_type", "true_position", "predicted_position"):
        assert result.excluded[name] == "leaky metadata (always excluded)"
        assert name not in dataset.schema.feature_columns
    assert result.features == [f for f in dataset.schema.feature_columns if f in result.features]
    assert set(result.features).isdisjoint(result.excluded)
    assert set(result.features) | set(result.excluded) >= set(dataset.schema.feature_columns)


def test_base_scores_of_the_synthetic_data_are_used(tiny_result):
    result, _, _ = tiny_result
    assert {"donor_score", "acceptor_score", "neither_score"} <= set(result.features)
    assert result.warnings == []


# -- protected columns -------------------------------------------------------------------------
def test_a_leaky_base_score_is_kept_with_a_warning(tmp_path):
    df = make_frame()
    df["donor_score"] = (df["splice_type"] == "donor").astype(float)  # the label itself
    result, _, _ = screen(write_dataset(tmp_path / "d", df))
    assert "donor_score" in result.features and "donor_score" not in result.excluded
    row = result.table.set_index("feature").loc["donor_score"]
    assert row["decision"] == "warned" and row["reason"].startswith("leakage")
    assert any("donor_score" in w and "protected (base-model score)" in w for w in result.warnings)


def test_keep_features_protects_a_leaky_column(tmp_path):
    df = make_frame()
    df["leak"] = is_site(df).astype(float)
    path = write_dataset(tmp_path / "d", df)
    assert "leak" in screen(path)[0].excluded
    result, _, _ = screen(path, keep_features=("leak",))
    assert "leak" in result.features
    assert any("leak" in w and "--keep-features" in w for w in result.warnings)


def test_a_user_exclusion_of_a_base_score_is_warned_about_and_not_honoured(tmp_path):
    result, _, _ = screen(write_dataset(tmp_path / "d", make_frame()), exclude_features="acceptor_score")
    assert "acceptor_score" in result.features
    assert any("acceptor_score" in w and "user exclusion" in w for w in result.warnings)


# -- user lists -----------------------------------------------------------------------------------
def test_a_missing_exclude_file_is_a_config_error(tmp_path):
    path = write_dataset(tmp_path / "d", make_frame())
    with pytest.raises(ConfigError, match="does not exist"):
        screen(path, exclude_features=str(tmp_path / "nope.txt"))
    with pytest.raises(ConfigError, match="does not exist"):
        parse_exclude_option("exclusions.txt")
    with pytest.raises(ConfigError, match="does not exist"):
        parse_exclude_option(("feat_a", "lists/mine"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [("feat_a", ["feat_a"]), ("feat_a, feat_b,", ["feat_a", "feat_b"]), (("feat_a", "feat_b", "feat_a"), ["feat_a", "feat_b"]),
     ("", []), (None, [])],
)
def test_exclude_option_values_are_names_or_comma_lists(value, expected):
    assert parse_exclude_option(value) == expected


def test_comma_lists_and_files_both_exclude_features(tmp_path):
    path = write_dataset(tmp_path / "d", make_frame())
    listing = tmp_path / "exclude.txt"
    listing.write_text("# features to drop\n\nfeat_a\n  feat_b\t(reason column is ignored)\n# feat_c\n")
    assert parse_exclude_option(str(listing)) == ["feat_a", "feat_b"]
    for value in (str(listing), "feat_a,feat_b", ("feat_a", "feat_b")):
        result, _, _ = screen(path, exclude_features=value)
        assert result.excluded["feat_a"] == result.excluded["feat_b"] == "user exclusion"
        assert "feat_a" not in result.features and "feat_b" not in result.features


def test_names_matching_no_column_are_reported_not_fatal(tmp_path, caplog):
    path = write_dataset(tmp_path / "d", make_frame())
    with caplog.at_level(logging.WARNING, logger="metadask.screening"):
        result, _, _ = screen(path, exclude_features="feat_a,no_such_feature", keep_features=("ghost",))
    assert result.excluded["feat_a"] == "user exclusion"
    assert any("no_such_feature" in w for w in result.warnings)
    assert any("ghost" in w and "--keep-features" in w for w in result.warnings)
    assert "no_such_feature" in caplog.text


# -- rules ------------------------------------------------------------------------------------
def test_leakage_policy_warn_keeps_leaky_features(tmp_path):
    df = make_frame()
    df["leak"] = is_site(df).astype(float)
    result, _, _ = screen(write_dataset(tmp_path / "d", df), leakage_policy="warn")
    assert "leak" in result.features and "leak" not in result.excluded
    assert any("leak" in w and "--leakage-policy warn" in w for w in result.warnings)


def test_leakage_is_found_with_each_class_and_by_rank_despite_outliers(tmp_path):
    df = make_frame(n_genes=60)
    rng = np.random.default_rng(1)
    df["acceptor_flag"] = (df["splice_type"] == "acceptor").astype(float)
    outlier = is_site(df) | (rng.uniform(size=len(df)) < 0.002)
    df["site_outliers"] = np.where(outlier, 1.0, 0.0)
    df.loc[np.flatnonzero(outlier & ~is_site(df))[:3], "site_outliers"] = 1e6  # ruins Pearson, not ranks
    result, _, _ = screen(write_dataset(tmp_path / "d", df))
    assert "with acceptor >= 0.95" in result.excluded["acceptor_flag"]
    assert result.excluded["site_outliers"].startswith("leakage: |spearman|")
    table = result.table.set_index("feature")
    assert abs(table.loc["site_outliers", "pearson"]) < 0.95 <= abs(table.loc["site_outliers", "spearman"])
    assert {"feat_a", "feat_b"} <= set(result.features)  # informative but not leaky


def test_exact_duplicates_keep_the_first_column_in_schema_order(tmp_path):
    df = make_frame()
    df["copy_of_a"] = df["feat_a"]
    df["almost_a"] = df["feat_a"] + 1e-9
    df["copy_of_score"] = df["donor_score"]
    result, _, _ = screen(write_dataset(tmp_path / "d", df))
    assert result.excluded["copy_of_a"] == "duplicate of feat_a"
    assert result.excluded["copy_of_score"] == "duplicate of donor_score"
    assert {"feat_a", "almost_a", "donor_score"} <= set(result.features)


def test_all_null_too_missing_infinite_and_near_constant_columns_are_excluded(tmp_path):
    df = make_frame()
    n = len(df)
    rng = np.random.default_rng(2)
    df["all_null"] = np.nan
    df["mostly_missing"] = np.where(rng.uniform(size=n) < 0.7, np.nan, rng.normal(size=n))
    df["some_missing"] = np.where(rng.uniform(size=n) < 0.3, np.nan, rng.normal(size=n))
    df["has_inf"] = rng.normal(size=n)
    df.loc[5, "has_inf"] = np.inf
    df["near_constant"] = 0.0
    df.loc[7, "near_constant"] = 1.0  # 1 of 1,200 rows: 99.92 % one value
    df["rare_but_kept"] = (rng.uniform(size=n) < 0.05).astype(float)
    result, _, _ = screen(write_dataset(tmp_path / "d", df))
    assert result.excluded["all_null"] == "all null"
    assert result.excluded["mostly_missing"].startswith("too many missing values: ")
    assert result.excluded["has_inf"].startswith("infinite values")
    assert result.excluded["near_constant"].startswith("near-constant")
    assert {"some_missing", "rare_but_kept"} <= set(result.features)
    stricter, _, _ = screen(tmp_path / "d", max_missing=0.2)
    assert stricter.excluded["some_missing"].startswith("too many missing values")


def test_block_size_does_not_change_the_screening(tmp_path, monkeypatch):
    df = make_frame()
    for i in range(10):
        df[f"extra_{i}"] = df["feat_a"] * (i % 3) + i  # duplicates across blocks, constants
    path = write_dataset(tmp_path / "d", df)
    wide, _, _ = screen(path)
    monkeypatch.setattr(screen_module, "MAX_BLOCK_COLUMNS", 3)
    monkeypatch.setattr(screen_module, "MIN_BLOCK_COLUMNS", 3)
    narrow, _, _ = screen(path)
    assert narrow.features == wide.features and narrow.excluded == wide.excluded
    pd.testing.assert_frame_equal(narrow.table, wide.table)


def test_block_statistics_match_screening_a_pandas_sample(tiny_result):
    result, dataset, index = tiny_result
    sample = read_sample(dataset, index, result.sample_genes,
                         [*dataset.schema.feature_columns, dataset.label_column, dataset.gene_column])
    decisions = screen_sample(sample, list(dataset.schema.feature_columns), dataset.label_column,
                              protected=dataset.schema.base_score_columns, reference=dataset.schema.base_score_columns,
                              default_excluded=ANNOTATION_ARTIFACTS)
    assert decisions.features == result.features
    read = [f for f in dataset.schema.feature_columns if f not in ANNOTATION_ARTIFACTS]
    table = result.table.set_index("feature").loc[read]
    ours = decisions.table.set_index("feature").loc[read]
    for stat in ("spearman", "pearson", "grouped_auc"):
        np.testing.assert_allclose(ours[stat], table[stat], rtol=1e-9, equal_nan=True)


# -- the sample --------------------------------------------------------------------------------
def _one_gene_per_file(tmp_path: Path) -> tuple:
    path = write_dataset(tmp_path / "d", make_frame(n_genes=120, rows_per_gene=20), genes_per_file=1)
    dataset = open_dataset(path)
    index = build_gene_index(dataset)
    genes = representative_genes(index, 0.1, seed=42, minimum=50)
    return dataset, index, genes


def test_screening_reads_only_the_rows_of_the_sampled_genes(tmp_path):
    dataset, index, genes = _one_gene_per_file(tmp_path)
    assert len(genes) == 50  # 10 % of 120 genes, raised to the minimum of 50
    sampled = set(index.files_for(genes))
    outside = [f for f in dataset.files if f not in sampled]
    assert len(outside) == 70
    for f in outside:  # any read of a gene outside the sample would now fail
        Path(f).write_bytes(b"not a parquet file")
    result = screen_features(dataset, index, TrainConfig())
    assert result.sample_genes == genes
    assert result.sample_rows == index.rows(genes) == 50 * 20


def test_a_corrupt_file_holding_a_sampled_gene_is_a_dataset_error(tmp_path):
    dataset, index, genes = _one_gene_per_file(tmp_path)
    Path(index.files_for(genes[:1])[0]).write_bytes(b"not a parquet file")
    with pytest.raises(DatasetError, match="Cannot read"):
        screen_features(dataset, index, TrainConfig())


# -- reuse and outputs ------------------------------------------------------------------------
def test_outputs_are_consistent_with_features_and_exclusions(tiny_result, tmp_path):
    result, dataset, _ = tiny_result
    result.write(tmp_path)
    text = (tmp_path / EXCLUDED_FILE).read_text()
    assert text.startswith("# ")
    assert load_exclusions(tmp_path / EXCLUDED_FILE) == result.excluded
    table = pd.read_csv(tmp_path / TABLE_FILE, keep_default_na=False, na_values=[""])
    assert {"feature", "pearson", "spearman", "missing_rate", "distinct_ratio", "decision", "reason"} <= set(table.columns)
    assert list(table.loc[table["decision"] != "excluded", "feature"]) == result.features
    excluded = table[table["decision"] == "excluded"].set_index("feature")["reason"]
    assert excluded.to_dict() == result.excluded
    assert not list(tmp_path.rglob(".*tmp*"))  # atomic writes leave no temporary files


def test_screening_from_reuses_a_list_without_reading_the_sample(tiny_result, tmp_path):
    first, dataset, index = tiny_result
    first.write(tmp_path / "run1")
    listing = tmp_path / "run1" / EXCLUDED_FILE
    listing.write_text(listing.read_text() + "not_in_this_dataset\tfrom another dataset\n")
    result = screen_features(dataset, index, TrainConfig(screening_from=str(listing)))
    assert result.features == first.features
    assert result.excluded == first.excluded
    assert result.table is None and result.sample_rows == 0 and result.source == f"file:{listing}"
    assert any("not_in_this_dataset" in w for w in result.warnings)
    result.write(tmp_path / "run2")
    assert load_exclusions(tmp_path / "run2") == first.excluded
    table = pd.read_csv(tmp_path / "run2" / TABLE_FILE)
    assert list(table.loc[table["decision"] == "used", "feature"]) == first.features


def test_screening_from_a_missing_file_is_a_config_error(tiny_result, tmp_path):
    _, dataset, index = tiny_result
    with pytest.raises(ConfigError, match="does not exist"):
        screen_features(dataset, index, TrainConfig(screening_from=str(tmp_path / "none.txt")))


def test_summary_lines_count_features_and_group_exclusions_by_reason(tiny_result):
    result, _, _ = tiny_result
    lines = summary_lines(result)
    assert lines[0] == "Features Used" and "Features Excluded" in lines
    assert f"  {len(result.features)} features (screened on a sample of 40 genes" in lines[1]
    assert any(line.startswith("  leakage (2): is_annotated_site, is_annotated_donor") for line in lines)
    assert any(line.startswith("  leaky metadata (3): ") for line in lines)


def test_screening_logs_the_sample_and_a_one_line_summary(tiny_dataset, caplog):
    with caplog.at_level(logging.DEBUG, logger="metadask.screening"):
        screen(tiny_dataset, screening_sample=20)
    messages = [r.getMessage() for r in caplog.records if r.name == "metadask.screening"]
    assert any("sample of 40 of 40 genes" in m for m in messages)  # at least 50 genes, or all
    assert any("features used;" in m and "leakage 2" in m for m in messages)
    assert any(m.startswith("Screening is_annotated_site: excluded - leakage") for m in messages)


def test_column_statistics_match_scipy_pearson_and_spearman_with_ties_and_missing_values():
    from scipy import stats

    from metadask.screening.rules import column_stats, leakage_targets

    rng = np.random.default_rng(3)
    codes = rng.choice(3, size=5000, p=[0.8, 0.1, 0.1])
    counts = rng.poisson(2 + 2 * (codes == 1)).astype(np.float32)  # integer ties: the bincount path
    counts[rng.uniform(size=5000) < 0.1] = np.nan
    scores = (rng.normal(size=5000) + (codes == 2)).astype(np.float32)  # continuous: the sort path
    for x, target in ((counts, codes == 1), (scores, codes == 2)):
        st = column_stats(x, leakage_targets(codes))
        ok = ~np.isnan(x)
        assert st.pearson == pytest.approx(stats.pearsonr(x[ok], target[ok]).statistic, rel=1e-6)
        assert st.spearman == pytest.approx(stats.spearmanr(x[ok], target[ok]).statistic, rel=1e-6)
        assert st.missing_rate == pytest.approx(1 - ok.mean())


# -- fold honesty: screening on all genes is the one deliberate exception -----------------------
def test_screening_each_folds_training_genes_excludes_the_same_features_as_all_genes_on_real_fly(real_fly_3mer):
    """The measurement docs/screening.md quotes: the exception changes no feature list, so no metric."""
    from metadask.dataset.index import GeneIndex
    from metadask.plan import assign_folds

    dataset = open_dataset(real_fly_3mer)
    index = build_gene_index(dataset)
    config = TrainConfig()
    everything = screen_features(dataset, index, config)
    folds = assign_folds(index, config.n_folds, config.seed)
    for fold in range(config.n_folds):
        training = GeneIndex(index.table.loc[sorted(folds.index[folds != fold])], index.files)
        inside = screen_features(dataset, training, config)
        assert set(everything.sample_genes) != set(inside.sample_genes)
        assert inside.excluded.keys() == everything.excluded.keys(), f"fold {fold}"
