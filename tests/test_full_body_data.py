"""Full-body datasets: the synthetic generator, layout detection, and the library's sampling."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from metadask.cli import main
from metadask.dataset import build_gene_index, open_dataset
from metadask.dataset.index import GeneIndex
from metadask.dataset.sampling import (
    SamplingRules,
    read_unsampled,
    sample_gene_rows,
    sample_mask,
    write_sampled_dataset,
)
from metadask.errors import ConfigError, DatasetError, OutputError
from metadask.testing import make_dataset, real_data_path

SAMPLING_COLUMNS = ["gene_id", "splice_type", "position", "donor_score", "acceptor_score"]


@pytest.fixture(scope="module")
def full_body(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """12 synthetic full-body genes (~2,000 positions each) in 3 files."""
    out = tmp_path_factory.mktemp("fb") / "full"
    make_dataset(out, 12, seed=3, genes_per_file=4, full_body=True, gene_length=2000)
    return out


@pytest.fixture(scope="module")
def rows(full_body: pathlib.Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(f) for f in sorted((full_body / "master").glob("*.parquet"))],
                     ignore_index=True)


def _real(name: str) -> pathlib.Path:
    path = real_data_path(name)
    if path is None:
        pytest.skip(f"shared real dataset {name} not found (expected ../shared/data/{name} or "
                    "METADASK_REAL_DATA)")
    return path


# -- the generator -----------------------------------------------------------------------

def test_full_body_genes_have_every_position_from_zero_to_the_gene_length(rows: pd.DataFrame) -> None:
    for _, g in rows.groupby("gene_id"):
        assert np.array_equal(g["position"].to_numpy(), np.arange(len(g)))
        assert (g["gene_length"] == len(g)).all()
    lengths = rows.groupby("gene_id").size()
    assert lengths.between(1000, 3000).all() and lengths.nunique() > 1


def test_full_body_landscape_has_missed_sites_decoys_and_many_more_local_peaks_than_sites(
        rows: pd.DataFrame) -> None:
    site = rows["splice_type"] != "neither"
    score = rows[["donor_score", "acceptor_score"]].max(axis=1)
    peak = (rows["donor_is_local_peak"] == 1) | (rows["acceptor_is_local_peak"] == 1)
    n_sites = int(site.sum())
    assert n_sites >= 40
    assert (peak & ~site).sum() > 10 * n_sites  # low-score local peaks everywhere
    assert ((score >= 0.01) & ~site).sum() > n_sites  # hard negatives
    assert (score[site] >= 0.5).mean() > 0.6  # most sites are found ...
    assert ((score[site] >= 0.03) & (score[site] < 0.5)).sum() >= 3  # ... some only moderately
    assert ((score >= 0.5) & ~site).sum() >= 1  # decoys: non-site high peaks
    assert (score[~site] < 0.001).mean() > 0.8  # mostly background


def test_full_body_context_features_are_the_neighbouring_rows_scores(rows: pd.DataFrame) -> None:
    g = rows[rows["gene_id"] == rows["gene_id"].iloc[0]]
    d = g["donor_score"].to_numpy()
    s = d + g["acceptor_score"].to_numpy()
    np.testing.assert_allclose(g["context_score_m1"].to_numpy()[1:], s[:-1])
    np.testing.assert_allclose(g["context_score_p2"].to_numpy()[:-2], s[2:])
    np.testing.assert_allclose(g["donor_diff_p1"].to_numpy()[:-1], d[:-1] - d[1:])


def test_no_labels_writes_no_label_column_and_no_label_counts(tmp_path: pathlib.Path) -> None:
    master = make_dataset(tmp_path / "nl", 2, seed=1, full_body=True, gene_length=800, labels=False)
    names = pq.read_schema(next(master.glob("*.parquet"))).names
    assert "splice_type" not in names and "pred_type" not in names
    assert {"gene_id", "position", "donor_score", "3mer_ACG"} <= set(names)
    header = (master / "gene_manifest.csv").read_text().splitlines()[0]
    assert header == "gene_id,gene_name,file,n_rows"


def test_inspect_no_labels_reads_an_unlabelled_full_body(tmp_path: pathlib.Path) -> None:
    make_dataset(tmp_path / "nl", 2, seed=1, full_body=True, gene_length=800, labels=False)
    runner = CliRunner()
    refused = runner.invoke(main, ["inspect", str(tmp_path / "nl")])
    assert refused.exit_code == 2 and "No label column 'splice_type'" in refused.output
    info = json.loads(runner.invoke(main, ["inspect", str(tmp_path / "nl"), "--no-labels", "--json"]).output)
    assert info["layout"] == "full-body" and info["labels"] is None and info["rows"] > 1000
    text = runner.invoke(main, ["inspect", str(tmp_path / "nl"), "--no-labels"]).output
    assert "Labels:           none (no 'splice_type' column" in text


def test_make_dataset_rejects_a_gene_length_out_of_range(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="'gene_length' option"):
        make_dataset(tmp_path / "x", 2, full_body=True, gene_length=10)


def test_cli_writes_a_full_body_dataset_that_inspect_calls_full_body(tmp_path: pathlib.Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(main, ["make-dataset", str(out), "--genes", "3", "--full-body",
                               "--gene-length", "800"])
    assert res.exit_code == 0, res.output
    text = runner.invoke(main, ["inspect", str(out)])
    assert "Layout:           full-body" in text.output
    info = json.loads(runner.invoke(main, ["inspect", str(out), "--json"]).output)
    assert info["layout"] == "full-body" and info["contiguous_genes"] == 3


def test_cli_refuses_a_gene_length_without_full_body(tmp_path: pathlib.Path) -> None:
    res = CliRunner().invoke(main, ["make-dataset", str(tmp_path / "x"), "--gene-length", "900"])
    assert res.exit_code == 2 and "--full-body" in res.output


# -- layout detection ----------------------------------------------------------------------

def test_inspect_says_sampled_for_the_sampled_synthetic_dataset(tiny_dataset: pathlib.Path) -> None:
    info = json.loads(CliRunner().invoke(main, ["inspect", str(tiny_dataset), "--json"]).output)
    assert info["layout"] == "sampled"
    assert info["contiguous_genes"] < info["genes"]


def test_gene_index_records_position_ranges_and_survives_its_cache(full_body: pathlib.Path,
                                                                     tmp_path: pathlib.Path) -> None:
    ds = open_dataset(full_body)
    index = build_gene_index(ds, cache=tmp_path / "index.parquet")
    assert index.is_full_body is True and index.layout == "full-body"
    assert (index.table["pos_min"] == 0).all()
    assert (index.table["pos_max"] == index.table["n_rows"] - 1).all()
    loaded = GeneIndex.load(tmp_path / "index.parquet", ds.fingerprint())
    assert loaded is not None and loaded.layout == "full-body"
    assert loaded.contiguous.all()


def test_one_gene_with_a_gap_makes_the_dataset_sampled(rows: pd.DataFrame, tmp_path: pathlib.Path) -> None:
    gene = rows["gene_id"].iloc[0]
    holed = rows[SAMPLING_COLUMNS].drop(index=rows.index[(rows["gene_id"] == gene) & (rows["position"] == 7)])
    holed.to_parquet(tmp_path / "holed.parquet")
    index = build_gene_index(open_dataset(tmp_path / "holed.parquet"))
    assert index.layout == "sampled"
    assert list(index.contiguous[~index.contiguous].index) == [gene]


def test_without_a_position_column_the_layout_is_unknown(rows: pd.DataFrame, tmp_path: pathlib.Path) -> None:
    rows[["gene_id", "splice_type", "donor_score"]].to_parquet(tmp_path / "nopos.parquet")
    index = build_gene_index(open_dataset(tmp_path / "nopos.parquet"))
    assert index.contiguous is None and index.is_full_body is None and index.layout == "unknown"


def test_real_fly_full_bodies_are_full_body_and_the_sampled_fly_rows_are_sampled() -> None:
    full = build_gene_index(open_dataset(_real("real_fly_fullbody_3mer_60")))
    assert full.layout == "full-body" and full.n_genes == 60 and full.n_rows == 352_174
    sampled = build_gene_index(open_dataset(_real("real_fly_3mer")))
    assert sampled.layout == "sampled"


# -- sampling ------------------------------------------------------------------------------

def test_sampling_keeps_every_site_and_every_hard_negative(rows: pd.DataFrame) -> None:
    out = sample_gene_rows(rows[SAMPLING_COLUMNS], seed=5)
    score = rows[["donor_score", "acceptor_score"]].max(axis=1)
    must = rows[(rows["splice_type"] != "neither") | (score >= 0.01)]
    key = ["gene_id", "position"]
    kept = out.set_index(key).index
    assert must.set_index(key).index.isin(kept).all()
    assert (out.set_index(key).loc[must.set_index(key).index, "sample_weight"] == 1.0).all()
    assert len(out) < 0.15 * len(rows)


def test_sample_weights_are_inverse_stratum_rates_and_sum_to_about_the_positions(rows: pd.DataFrame) -> None:
    rules = SamplingRules()
    out = sample_gene_rows(rows[SAMPLING_COLUMNS], rules, seed=5)
    assert set(np.round(out["sample_weight"].unique(), 9)) == {1.0, 1 / rules.near_rate, 1 / rules.easy_rate}
    assert out["sample_weight"].sum() == pytest.approx(len(rows), rel=0.05)
    per_gene = out.groupby("gene_id")["sample_weight"].sum() / rows.groupby("gene_id").size()
    assert per_gene.between(0.6, 1.4).all()


def test_near_negatives_lie_within_the_window_of_a_site(rows: pd.DataFrame) -> None:
    rules = SamplingRules(easy_rate=1e-9)  # practically: sites, hard and near rows only
    kept, prob = sample_mask(rows[SAMPLING_COLUMNS], rules, seed=1)
    near = rows[kept & (prob == rules.near_rate)]
    sites = rows[rows["splice_type"] != "neither"]
    for gene, g in near.groupby("gene_id"):
        s = sites.loc[sites["gene_id"] == gene, "position"].to_numpy()
        dist = np.abs(g["position"].to_numpy()[:, None] - s[None, :]).min(axis=1)
        assert (dist <= rules.near_window).all()
    assert len(near) > 0


def test_sampling_is_deterministic_and_independent_of_partitioning_and_row_order(rows: pd.DataFrame) -> None:
    df = rows[SAMPLING_COLUMNS]
    whole = sample_gene_rows(df, seed=9)
    again = sample_gene_rows(df, seed=9)
    pd.testing.assert_frame_equal(whole, again)
    per_gene = pd.concat([sample_gene_rows(g, seed=9) for _, g in df.groupby("gene_id")])
    shuffled = sample_gene_rows(df.sample(frac=1.0, random_state=0), seed=9)
    key = ["gene_id", "position"]
    expected = whole.sort_values(key).reset_index(drop=True)
    for other in (per_gene, shuffled):
        pd.testing.assert_frame_equal(other.sort_values(key).reset_index(drop=True), expected)
    assert not sample_gene_rows(df, seed=10).set_index(key).index.equals(whole.set_index(key).index)


def test_the_rest_is_exactly_the_negatives_the_sample_left_out(rows: pd.DataFrame,
                                                                full_body: pathlib.Path) -> None:
    df = rows[SAMPLING_COLUMNS]
    kept, rest = sample_gene_rows(df, seed=4, return_rest=True)
    assert len(kept) + len(rest) == len(df)
    assert not set(kept.index) & set(rest.index)
    assert (rest["splice_type"] == "neither").all()
    assert rest["inclusion_probability"].lt(1).all()
    ds = open_dataset(full_body)
    genes = sorted(df["gene_id"].unique())[:2]
    read = read_unsampled(ds, genes, seed=4, columns=["gene_id", "position"])
    expected = rest[rest["gene_id"].isin(genes)].sort_values(["gene_id", "position"])
    assert list(read.columns) == ["gene_id", "position", "inclusion_probability"]
    np.testing.assert_array_equal(read.sort_values(["gene_id", "position"])["position"], expected["position"])


def test_sample_weight_is_metadata_never_a_feature(full_body: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = write_sampled_dataset(full_body, tmp_path / "s", seed=2)
    ds = open_dataset(out)
    assert "sample_weight" in ds.schema.metadata_columns
    assert "sample_weight" not in ds.schema.feature_columns
    weighted = real_data_path("real_fly_3mer_weighted")
    if weighted is not None:
        assert "sample_weight" not in open_dataset(weighted).schema.feature_columns


@pytest.mark.parametrize("rules, name", [
    (SamplingRules(near_rate=0.0), "near_rate"),
    (SamplingRules(easy_rate=1.5), "easy_rate"),
    (SamplingRules(hard_threshold=-0.1), "hard_threshold"),
    (SamplingRules(near_window=-3), "near_window"),
])
def test_bad_sampling_rules_raise_a_config_error_naming_the_rule(rules: SamplingRules, name: str,
                                                                 rows: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match=f"'{name}' option"):
        sample_gene_rows(rows[SAMPLING_COLUMNS].head(50), rules)


def test_sampling_rows_without_labels_is_a_clear_error(rows: pd.DataFrame) -> None:
    with pytest.raises(DatasetError, match="splice_type"):
        sample_gene_rows(rows[["gene_id", "position", "donor_score", "acceptor_score"]])


def test_write_sampled_dataset_on_a_local_cluster_writes_an_openable_dataset(
        client, full_body: pathlib.Path, rows: pd.DataFrame, tmp_path: pathlib.Path) -> None:
    done: list[tuple[int, int]] = []
    out = write_sampled_dataset(full_body, tmp_path / "sampled", seed=6, client=client,
                                max_rows_per_task=5000, progress=lambda d, t: done.append((d, t)))
    files = sorted((out / "master").glob("*.parquet"))
    assert len(files) == len(done) > 3 and done[-1] == (len(files), len(files))
    ds = open_dataset(out)
    assert ds.schema.columns.keys() == {*open_dataset(full_body).schema.columns, "sample_weight"}
    got = pd.concat([ds.read_file(f, ["gene_id", "position", "sample_weight"]) for f in ds.files])
    want = sample_gene_rows(rows[SAMPLING_COLUMNS], seed=6)
    key = ["gene_id", "position"]
    pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True),
                                  want[[*key, "sample_weight"]].sort_values(key).reset_index(drop=True))
    manifest = pd.read_csv(out / "master" / "gene_manifest.csv")
    assert manifest["n_positions"].sum() == len(rows) and manifest["n_rows"].sum() == len(want)
    info = json.loads((out / "sampling.json").read_text())
    assert info["seed"] == 6 and info["rules"]["near_window"] == 50
    assert build_gene_index(ds).layout == "sampled"
    assert [p.name for p in tmp_path.iterdir()] == ["sampled"]  # no temporary leftovers


def test_write_sampled_dataset_is_atomic_and_never_overwrites_silently(
        full_body: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = write_sampled_dataset(full_body, tmp_path / "s", seed=1, genes=["SYN000001"])
    before = sorted(p.name for p in (out / "master").iterdir())
    with pytest.raises(OutputError, match="not empty"):
        write_sampled_dataset(full_body, out, seed=1)

    def stop(done: int, total: int) -> None:
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_sampled_dataset(full_body, out, seed=1, overwrite=True, progress=stop)
    assert sorted(p.name for p in (out / "master").iterdir()) == before  # the old one intact
    with pytest.raises(RuntimeError):
        write_sampled_dataset(full_body, tmp_path / "new", seed=1, progress=stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    write_sampled_dataset(full_body, out, seed=1, overwrite=True)
    assert len(pd.read_csv(out / "master" / "gene_manifest.csv")) == 12


def test_real_fly_full_body_sample_keeps_a_few_percent_with_weights_summing_to_the_positions() -> None:
    ds = open_dataset(_real("real_fly_fullbody_3mer_60"))
    df = pd.concat([ds.read_file(f, SAMPLING_COLUMNS) for f in ds.files], ignore_index=True)
    out = sample_gene_rows(df, seed=42)
    assert (out["splice_type"] != "neither").sum() == (df["splice_type"] != "neither").sum() == 466
    assert 0.01 < len(out) / len(df) < 0.04
    assert out["sample_weight"].sum() == pytest.approx(len(df), rel=0.02)
