"""Tests of the dataset layer (metadask.dataset): opening, schema, gene index, drift, memory,
representative samples, matrices, ``metadask inspect`` and the bad-input errors.

Datasets are real parquet files written by the tests (pyarrow / pandas) into ``tmp_path``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import pickle
import re

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from fsspec.implementations.local import LocalFileSystem

from metadask.cli import main
from metadask.dataset import (
    BASE_SCORE_COLUMNS,
    METADATA_COLUMNS,
    GeneIndex,
    build_gene_index,
    inspect_dataset,
    matrix_bytes,
    open_dataset,
    read_sample,
    representative_genes,
)
from metadask.dataset.sample import sample_size
from metadask.dataset.schema import encode_labels, is_kmer
from metadask.dataset.source import feature_matrix
from metadask.errors import ConfigError, DatasetError

KMERS = ("3mer_AAA", "3mer_ACG", "3mer_TTT")
LABEL_NAMES = ("neither", "donor", "acceptor")
# Written independently of metadask.dataset.schema, to check its classification.
SYNTHETIC_METADATA = {
    "gene_id", "transcript_id", "gene_name", "gene_type", "chrom", "strand", "position",
    "absolute_position", "window_start", "window_end", "transcript_count", "splice_type",
    "pred_type", "true_position", "predicted_position", "score",
}


# -- helpers ----------------------------------------------------------------------------


def _gene_rows(gene: str, n: int, *, start: int = 0, seed: int = 0, kmers=KMERS,
               labels: str = "string") -> pd.DataFrame:
    """Rows ``start .. start + n - 1`` of a gene whose first two positions are sites."""
    rng = np.random.default_rng([seed, sum(map(ord, gene)), start])
    pos = np.arange(start, start + n)
    codes = np.where(pos == 0, 1, np.where(pos == 1, 2, 0))
    scores = rng.dirichlet(np.ones(3), size=n)
    df = pd.DataFrame({
        "gene_id": gene,
        "position": pos,
        "splice_type": np.asarray(LABEL_NAMES, dtype=object)[codes] if labels == "string" else codes,
        "neither_score": scores[:, 0],
        "donor_score": scores[:, 1],
        "acceptor_score": scores[:, 2],
        "feat_a": rng.normal(size=n),
    })
    for k in kmers:
        df[k] = rng.integers(0, 5, size=n)
    return df


def _frame(genes: dict[str, int], **kw) -> pd.DataFrame:
    return pd.concat([_gene_rows(g, n, **kw) for g, n in genes.items()], ignore_index=True)


def _write(path: pathlib.Path, df: pd.DataFrame) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)
    return path


def _write_spanning(root: pathlib.Path) -> dict[str, int]:
    """Three files; gene B spans the first two; the second file has an extra N k-mer."""
    _write(root / "batch_00000.parquet", pd.concat([
        _gene_rows("A", 5), _gene_rows("B", 3)], ignore_index=True))
    _write(root / "batch_00001.parquet", pd.concat([
        _gene_rows("B", 4, start=3, kmers=(*KMERS, "3mer_ANA")),
        _gene_rows("C", 6, kmers=(*KMERS, "3mer_ANA"))], ignore_index=True))
    _write(root / "batch_00002.parquet", _frame({"D": 8, "E": 2}))
    return {"A": 5, "B": 7, "C": 6, "D": 8, "E": 2}


@pytest.fixture(scope="module")
def spanning(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("spanning") / "ds"
    sizes = _write_spanning(root)
    return root, sizes


def _manifest(dataset: pathlib.Path) -> pd.DataFrame:
    return pd.read_csv(dataset / "master" / "gene_manifest.csv").set_index("gene_id")


def _snapshot(root: pathlib.Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def _no_compute(dsk, keys, **kwargs):
    raise AssertionError("a Dask computation ran where none was expected")


class _CountingFS(LocalFileSystem):
    """The real local filesystem, recording every file it opens."""

    opened: list[str] = []

    def _open(self, path, mode="rb", **kwargs):
        type(self).opened.append(self._strip_protocol(path))
        return super()._open(path, mode, **kwargs)


# -- opening and schema -----------------------------------------------------------------


def test_open_dataset_accepts_a_name_its_master_a_glob_and_a_file_url(
        tiny_dataset: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    master = tiny_dataset / "master"
    expected = tuple(str(p) for p in sorted(master.glob("*.parquet")))
    assert len(expected) == 4
    for spec in (tiny_dataset, master, f"{master}/*.parquet", f"file://{tiny_dataset}", str(master) + "/"):
        assert open_dataset(spec).files == expected, spec
    monkeypatch.chdir(tiny_dataset.parent)
    assert open_dataset(tiny_dataset.name).files == expected
    assert open_dataset(f"{tiny_dataset.name}/master/batch_0000[01].parquet").files == expected[:2]


def test_open_dataset_reads_an_fsspec_url_of_another_filesystem() -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    try:
        for i, sizes in enumerate(({"A": 3}, {"B": 4, "C": 2})):
            with fs.open(f"/metadask-test/ds/master/batch_{i:05d}.parquet", "wb") as fh:
                pq.write_table(pa.Table.from_pandas(_frame(sizes), preserve_index=False), fh)
        ds = open_dataset("memory://metadask-test/ds")
        assert ds.files == ("memory:///metadask-test/ds/master/batch_00000.parquet",
                            "memory:///metadask-test/ds/master/batch_00001.parquet")
        with dask.config.set(scheduler="sync"):
            index = build_gene_index(ds)
            sample = read_sample(ds, index, ["C"])
        assert index.table["n_rows"].to_dict() == {"A": 3, "B": 4, "C": 2}
        assert sample["position"].tolist() == [0, 1]
    finally:
        fs.rm("/metadask-test", recursive=True)


def test_open_dataset_accepts_a_single_parquet_file(tiny_dataset: pathlib.Path) -> None:
    one = sorted((tiny_dataset / "master").glob("*.parquet"))[1]
    ds = open_dataset(one)
    assert ds.files == (str(one),)
    assert ds.schema.n_rows == pq.ParquetFile(one).metadata.num_rows


def test_non_parquet_and_hidden_files_next_to_the_data_are_ignored(tmp_path: pathlib.Path) -> None:
    _write(tmp_path / "d" / "part.parquet", _frame({"A": 3}))
    (tmp_path / "d" / "notes.txt").write_text("not data")
    (tmp_path / "d" / "gene_manifest.csv").write_text("gene_id\nA\n")
    (tmp_path / "d" / ".part.parquet").write_bytes(b"half-written")
    assert open_dataset(tmp_path / "d").files == (str(tmp_path / "d" / "part.parquet"),)


def test_schema_is_read_from_footers_without_reading_row_data(tmp_path: pathlib.Path) -> None:
    path = _write(tmp_path / "d" / "part.parquet", _frame({"A": 400, "B": 600}))
    raw = bytearray(path.read_bytes())
    footer_start = len(raw) - 8 - int.from_bytes(raw[-8:-4], "little")
    raw[4:footer_start] = b"\xff" * (footer_start - 4)  # every data page destroyed, footer intact
    path.write_bytes(bytes(raw))

    ds = open_dataset(tmp_path / "d")

    assert ds.schema.n_rows == 1000
    assert ds.schema.label_encoding == "string"
    assert ds.schema.feature_columns == ("neither_score", "donor_score", "acceptor_score", "feat_a", *KMERS)
    with pytest.raises(DatasetError, match="part.parquet"):
        ds.read_file(ds.files[0])  # proves the rows really are unreadable


def test_schema_classifies_metadata_base_scores_features_and_kmers(tiny_dataset: pathlib.Path) -> None:
    s = open_dataset(tiny_dataset).schema
    columns = set(s.columns)
    assert set(s.metadata_columns) == columns & SYNTHETIC_METADATA
    assert {"score", "transcript_count"} <= set(s.metadata_columns)
    assert not set(s.feature_columns) & SYNTHETIC_METADATA
    assert set(s.feature_columns) == columns - SYNTHETIC_METADATA
    assert s.base_score_columns == BASE_SCORE_COLUMNS
    assert set(s.kmer_columns) == {c for c in columns if re.fullmatch(r"\d+mer_[ACGTN]+", c)}
    # plain features keep file order; k-mers come last, sorted by (k, name)
    n_plain = len(s.feature_columns) - len(s.kmer_columns)
    assert s.feature_columns[n_plain:] == s.kmer_columns
    assert list(s.kmer_columns) == sorted(s.kmer_columns, key=lambda c: (len(c), c))


def test_kmer_pattern_matches_only_kmer_count_columns() -> None:
    assert is_kmer("3mer_ACG") and is_kmer("5mer_ANGTC") and is_kmer("12mer_" + "A" * 12)
    assert not is_kmer("3mer_acg") and not is_kmer("mer_ACG") and not is_kmer("3mer_ACGX")
    assert not is_kmer("kmer_count") and not is_kmer("3mer_")


def test_string_and_integer_labels_are_both_accepted_and_counted_alike(tmp_path: pathlib.Path) -> None:
    sizes = {"A": 4, "B": 6, "C": 3}
    _write(tmp_path / "s" / "p.parquet", _frame(sizes, labels="string"))
    _write(tmp_path / "i" / "p.parquet", _frame(sizes, labels="int"))
    strings, ints = open_dataset(tmp_path / "s"), open_dataset(tmp_path / "i")
    assert strings.schema.label_encoding == "string"
    assert ints.schema.label_encoding == "integer"
    with dask.config.set(scheduler="sync"):
        a, b = build_gene_index(strings), build_gene_index(ints)
    assert a.label_counts() == b.label_counts() == {"neither": 7, "donor": 3, "acceptor": 3}
    pd.testing.assert_frame_equal(a.table, b.table)


def test_encode_labels_maps_names_and_codes_and_reports_unknown_values() -> None:
    expected = np.array([0, 1, 2, 1], dtype=np.int8)
    assert encode_labels(pd.Series(["neither", "donor", "acceptor", "donor"])).tolist() == expected.tolist()
    assert encode_labels(pd.Series([" Neither", "DONOR", "acceptor ", "donor"])).tolist() == expected.tolist()
    assert encode_labels(pd.Series([0, 1, 2, 1])).tolist() == expected.tolist()
    assert encode_labels(pd.Series([0, 1, 2, 1])).dtype == np.int8
    with pytest.raises(DatasetError, match=r"'exon' \(2 rows\)"):
        encode_labels(pd.Series(["neither", "exon", "exon"]))
    with pytest.raises(DatasetError, match=r"3 \(1 rows\)"):
        encode_labels(pd.Series([0, 3, 1]))
    with pytest.raises(DatasetError, match="1 null"):
        encode_labels(pd.Series(["neither", None]))


def test_label_and_gene_columns_can_be_renamed(tmp_path: pathlib.Path) -> None:
    df = _frame({"A": 4, "B": 5}).rename(columns={"splice_type": "site", "gene_id": "locus"})
    df["gene_id"] = 7  # a numeric column that merely carries the default name
    _write(tmp_path / "d" / "p.parquet", df)

    ds = open_dataset(tmp_path / "d", label_column="site", gene_column="locus")

    assert (ds.label_column, ds.gene_column) == ("site", "locus")
    assert {"site", "locus", "gene_id"} <= set(ds.schema.metadata_columns)
    assert not {"site", "locus"} & set(ds.schema.feature_columns)
    with dask.config.set(scheduler="sync"):
        index = build_gene_index(ds)
    assert index.table["n_rows"].to_dict() == {"A": 4, "B": 5}
    with pytest.raises(DatasetError, match="No label column 'splice_type'.*--label-column"):
        open_dataset(tmp_path / "d", gene_column="locus")


def test_extra_metadata_columns_are_never_features(tmp_path: pathlib.Path) -> None:
    _write(tmp_path / "d" / "p.parquet", _frame({"A": 3}))
    ds = open_dataset(tmp_path / "d", metadata_columns=["feat_a"])
    assert "feat_a" in ds.schema.metadata_columns
    assert "feat_a" not in ds.schema.feature_columns


def test_integer_gene_ids_are_indexed_and_read_back(tmp_path: pathlib.Path) -> None:
    df = _frame({"A": 3, "B": 4})
    df["gene_id"] = np.where(df["gene_id"] == "A", 10, 2)
    _write(tmp_path / "d" / "p.parquet", df)
    ds = open_dataset(tmp_path / "d")
    with dask.config.set(scheduler="sync"):
        index = build_gene_index(ds)
        sample = read_sample(ds, index, ["10"])
    assert index.table["n_rows"].to_dict() == {"10": 3, "2": 4}
    assert len(ds.read_genes(["2"])) == 4
    x, meta = ds.read_matrix(["10", "2"], ["feat_a"])
    assert x.shape == (7, 1)
    assert sample["gene_id"].tolist() == [10, 10, 10]


def test_a_dataset_pickles_with_its_schema(tiny_dataset: pathlib.Path) -> None:
    ds = open_dataset(tiny_dataset)
    back = pickle.loads(pickle.dumps(ds))
    assert back.files == ds.files and back.schema == ds.schema


# -- gene index -------------------------------------------------------------------------


def test_gene_index_counts_every_row_once_and_matches_the_manifest(tiny_dataset: pathlib.Path) -> None:
    ds = open_dataset(tiny_dataset)
    with dask.config.set(scheduler="threads"):
        index = build_gene_index(ds)
    manifest = _manifest(tiny_dataset)
    assert index.n_genes == len(manifest) == 40
    assert index.n_rows == ds.schema.n_rows == int(manifest["n_rows"].sum())
    assert index.table["n_rows"].to_dict() == manifest["n_rows"].to_dict()
    assert index.table["n_donor"].to_dict() == manifest["n_donor"].to_dict()
    assert index.table["n_acceptor"].to_dict() == manifest["n_acceptor"].to_dict()
    counts = index.table[["n_neither", "n_donor", "n_acceptor"]].sum(axis=1)
    assert (counts == index.table["n_rows"]).all()
    assert index.genes == sorted(manifest.index)
    # each synthetic file holds whole genes: one file per gene, the one the manifest names
    for gene, row in manifest.iterrows():
        assert index.files_for([gene]) == [str(tiny_dataset / "master" / row["file"])]


def test_no_gene_is_lost_when_a_gene_spans_two_files(spanning) -> None:
    root, sizes = spanning
    ds = open_dataset(root)
    with dask.config.set(scheduler="sync"):
        index = build_gene_index(ds)
    assert index.table["n_rows"].to_dict() == sizes
    assert index.n_rows == sum(sizes.values()) == ds.schema.n_rows
    assert index.table.loc["B", "files"] == (0, 1)
    assert index.files_for(["B"]) == list(ds.files[:2])
    assert index.files_for(["E", "A"]) == [ds.files[0], ds.files[2]]
    assert index.rows(["B", "E"]) == 9
    rows = ds.read_genes(["B"])
    assert rows["position"].tolist() == list(range(7))  # all of B, in file order
    assert index.label_counts(["B"]) == {"neither": 5, "donor": 1, "acceptor": 1}
    assert index.label_counts() == {"neither": 18, "donor": 5, "acceptor": 5}


def test_gene_index_on_the_distributed_cluster_equals_the_local_one(client, spanning) -> None:
    root, sizes = spanning
    ds = open_dataset(root)
    distributed = build_gene_index(ds)  # runs on the client's workers
    with dask.config.set(scheduler="sync"):
        local = build_gene_index(ds)
    assert distributed.table["n_rows"].to_dict() == sizes
    pd.testing.assert_frame_equal(distributed.table, local.table)
    assert distributed.files == local.files
    sample = read_sample(ds, distributed, ["B", "D"])  # read on the workers
    assert sample.groupby("gene_id").size().to_dict() == {"B": 7, "D": 8}


def test_gene_index_cache_is_reused_until_a_file_changes(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "ds"
    _write_spanning(root)
    cache = tmp_path / "run" / "cache" / "gene_index.parquet"  # folders created on save
    with dask.config.set(scheduler="sync"):
        first = build_gene_index(open_dataset(root), cache=cache)
    assert cache.exists()
    assert [p.name for p in cache.parent.iterdir()] == ["gene_index.parquet"]  # no temporary left

    with dask.config.set(scheduler=_no_compute):  # reuse computes nothing
        second = build_gene_index(open_dataset(root), cache=cache)
    pd.testing.assert_frame_equal(first.table, second.table)
    assert second.files == first.files

    _write(root / "batch_00002.parquet", _frame({"D": 8, "E": 2, "F": 9}))
    with pytest.raises(AssertionError, match="computation ran"):
        with dask.config.set(scheduler=_no_compute):
            build_gene_index(open_dataset(root), cache=cache)
    with dask.config.set(scheduler="sync"):
        third = build_gene_index(open_dataset(root), cache=cache)
    assert third.table.loc["F", "n_rows"] == 9
    assert third.n_rows == first.n_rows + 9
    with dask.config.set(scheduler=_no_compute):
        assert build_gene_index(open_dataset(root), cache=cache).n_rows == third.n_rows


def test_a_cache_of_another_dataset_or_an_unreadable_cache_is_rebuilt(tmp_path: pathlib.Path) -> None:
    _write(tmp_path / "one" / "p.parquet", _frame({"A": 3}))
    _write(tmp_path / "two" / "p.parquet", _frame({"B": 4}))
    cache = tmp_path / "index.parquet"
    with dask.config.set(scheduler="sync"):
        build_gene_index(open_dataset(tmp_path / "one"), cache=cache)
        other = build_gene_index(open_dataset(tmp_path / "two"), cache=cache)
        assert other.genes == ["B"]
        cache.write_bytes(b"not parquet")
        rebuilt = build_gene_index(open_dataset(tmp_path / "two"), cache=cache)
    assert rebuilt.genes == ["B"]
    assert GeneIndex.load(cache) is not None  # the garbage was replaced by a good cache


# -- schema drift -----------------------------------------------------------------------


def test_kmers_missing_from_some_files_read_as_zero_everywhere(spanning) -> None:
    root, sizes = spanning
    ds = open_dataset(root)
    first, second, third = ds.files
    assert dict(ds.schema.drift) == {"3mer_ANA": (first, third)}
    assert "3mer_ANA" in ds.schema.feature_columns

    assert (ds.read_file(first, ["3mer_ANA"])["3mer_ANA"] == 0).all()
    raw = pq.read_table(second, columns=["3mer_ANA"]).column(0).to_numpy()
    assert ds.read_file(second, ["3mer_ANA"])["3mer_ANA"].tolist() == raw.tolist()

    genes = ds.read_genes(list(sizes))
    # canonical order: by gene, then file order: A and B's first 3 rows (file 0), B's last 4
    # rows and C (file 1: the raw counts), D and E (file 2)
    expected_ana = np.concatenate([np.zeros(5 + 3), raw, np.zeros(8 + 2)])
    assert genes["gene_id"].tolist() == [g for g in sorted(sizes) for _ in range(sizes[g])]
    np.testing.assert_array_equal(genes["3mer_ANA"].to_numpy(float), expected_ana)

    x, meta = ds.read_matrix(list(sizes), ["feat_a", "3mer_ANA"])
    np.testing.assert_array_equal(x[:, 1], expected_ana.astype(np.float32))

    frame = ds.to_dask(["gene_id", "position", "3mer_ANA"]).compute(scheduler="sync")
    frame = frame.sort_values(["gene_id", "position"], kind="stable").reset_index(drop=True)
    np.testing.assert_array_equal(frame["3mer_ANA"].to_numpy(float), expected_ana)
    assert ds.to_dask().npartitions == 3


def test_to_dask_holds_every_row_with_the_union_of_columns(spanning) -> None:
    root, sizes = spanning
    ds = open_dataset(root)
    ddf = ds.to_dask()
    assert list(ddf.columns) == list(ds.schema.columns)
    frame = ddf.compute(scheduler="sync")
    assert len(frame) == sum(sizes.values())
    assert frame.groupby("gene_id").size().to_dict() == sizes


def test_a_non_kmer_column_missing_from_some_files_is_an_error_naming_files_and_columns(
        tmp_path: pathlib.Path) -> None:
    _write(tmp_path / "d" / "a.parquet", _frame({"A": 3}))
    _write(tmp_path / "d" / "b.parquet", _frame({"B": 3}).drop(columns=["feat_a"]))
    with pytest.raises(DatasetError, match=r"feat_a.*b\.parquet.*Only k-mer columns may differ"):
        open_dataset(tmp_path / "d")


# -- memory, matrices -------------------------------------------------------------------


def test_memory_estimate_is_rows_times_features_times_four_bytes(spanning) -> None:
    root, sizes = spanning
    ds = open_dataset(root)
    with dask.config.set(scheduler="sync"):
        index = build_gene_index(ds)
    n_features = len(ds.schema.feature_columns)
    assert matrix_bytes(index, n_features) == sum(sizes.values()) * n_features * 4
    assert matrix_bytes(index, 10, ["B", "E"]) == 9 * 10 * 4
    info = inspect_dataset(ds, index)
    assert info["training_matrix_bytes"] == ds.schema.n_rows * n_features * 4
    x, _ = ds.read_matrix(["B", "E"], ds.schema.feature_columns)
    assert x.nbytes == matrix_bytes(index, n_features, ["B", "E"])


def test_read_matrix_equals_read_genes_features_as_float32_in_the_same_order(
        tiny_dataset: pathlib.Path) -> None:
    ds = open_dataset(tiny_dataset)
    with dask.config.set(scheduler="sync"):
        index = build_gene_index(ds)
    genes = index.genes[3::7]  # genes from several files
    features = list(ds.schema.feature_columns)
    frame = ds.read_genes(genes)
    x, meta = ds.read_matrix(genes, features, files=index.files_for(genes), columns=["splice_type", "position"])
    assert x.dtype == np.float32 and x.shape == (index.rows(genes), len(features))
    np.testing.assert_array_equal(x, frame[features].to_numpy(dtype=np.float32))
    assert meta["gene_id"].tolist() == frame["gene_id"].tolist()
    assert meta["position"].tolist() == frame["position"].tolist()
    assert meta["splice_type"].tolist() == frame["splice_type"].tolist()
    np.testing.assert_array_equal(feature_matrix(frame, features), x)


def test_read_matrix_orders_a_spanning_gene_like_read_genes(spanning) -> None:
    root, sizes = spanning
    ds = open_dataset(root)
    features = list(ds.schema.feature_columns)
    x, meta = ds.read_matrix(["C", "B", "A"], features)
    frame = ds.read_genes(["A", "B", "C"])
    np.testing.assert_array_equal(x, frame[features].to_numpy(dtype=np.float32))
    assert meta["gene_id"].tolist() == ["A"] * 5 + ["B"] * 7 + ["C"] * 6
    assert frame.loc[frame["gene_id"] == "B", "position"].tolist() == list(range(7))


def test_a_read_opens_each_file_once_and_gives_the_same_rows_with_or_without_the_index_counts(spanning) -> None:
    """One reading path: a spanning gene (B) read with the gene index's counts opens each file once.

    Without the counts (a gene set built by hand) a first pass reads the gene column: the same rows.
    """
    from metadask.dataset.rows import GeneSet, gene_set, read_rows

    root, sizes = spanning
    ds = open_dataset(root)
    with dask.config.set(scheduler="sync"):
        index = build_gene_index(ds)
    features = list(ds.schema.feature_columns)
    counting = dataclasses.replace(ds, fs=_CountingFS())
    frame = ds.read_genes(["A", "B", "C"])
    for gs, opens in ((gene_set(index, ["C", "B", "A"]), 1),
                      (GeneSet(("A", "B", "C"), tuple(index.files_for(["A", "B", "C"]))), 2)):
        _CountingFS.opened.clear()
        x, y, meta = read_rows(counting, gs, features)
        assert sorted(_CountingFS.opened) == sorted(gs.files * opens) and len(gs.files) == 2, _CountingFS.opened
        np.testing.assert_array_equal(x, frame[features].to_numpy(dtype=np.float32))
        assert meta["gene_id"].tolist() == ["A"] * 5 + ["B"] * 7 + ["C"] * 6
        assert meta["position"].tolist() == frame["position"].tolist()
    assert gene_set(index, ["C", "B", "A"]).rows == (5, 7, 6)


def test_a_file_holding_other_rows_than_the_index_counts_is_a_one_line_dataset_error(spanning) -> None:
    from metadask.dataset.rows import GeneSet

    root, sizes = spanning
    ds = open_dataset(root)
    with pytest.raises(DatasetError, match=r"genes B hold other rows than the gene index lists.*changed after indexing"):
        ds.read_matrix(["A", "B"], ["feat_a"], files=ds.files[:2], gene_rows=(5, 6))


def test_the_dataset_as_a_gene_partitioned_dask_dataframe_with_known_divisions(tiny_dataset: pathlib.Path) -> None:
    from metadask.dataset.rows import gene_frame, gene_partitions

    ds = open_dataset(tiny_dataset)
    with dask.config.set(scheduler="sync"):
        index = build_gene_index(ds)
        ddf = gene_frame(ds, index, ["position", "splice_type", "3mer_AAA"], max_rows=1500)
        parts = gene_partitions(index, index.genes, 1500)
        assert ddf.npartitions == len(parts) > len(ds.files)  # whole genes, at most 1,500 rows unless one gene is more
        assert ddf.known_divisions and ddf.divisions[0] == index.genes[0] and ddf.divisions[-1] == index.genes[-1]
        assert list(ddf.columns) == ["position", "splice_type", "3mer_AAA"] and ddf.index.name == "gene_id"
        for i in (0, len(parts) // 2, len(parts) - 1):
            part = ddf.get_partition(i).compute()
            assert sorted(set(part.index)) == list(parts[i][0].genes) and len(part) == parts[i][1]
        whole = ddf.compute()
        gene = index.genes[17]
        np.testing.assert_array_equal(ddf.loc[gene].compute()["position"].to_numpy(),
                                      ds.read_genes([gene])["position"].to_numpy())
    frame = ds.read_genes(index.genes, ["gene_id", "position", "3mer_AAA"])
    assert whole.index.tolist() == frame["gene_id"].tolist()
    with pytest.raises(DatasetError, match="at least one gene"):
        gene_frame(ds, index, genes=[])
    np.testing.assert_array_equal(whole["3mer_AAA"].to_numpy(), frame["3mer_AAA"].to_numpy())


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("bad", [np.inf, -np.inf, 1e39], ids=["inf", "minus-inf", "float32-overflow"])
def test_an_infinite_feature_value_is_a_dataset_error_naming_the_column(tmp_path: pathlib.Path, bad) -> None:
    df = _frame({"A": 4})
    df.loc[2, "acceptor_score"] = bad
    _write(tmp_path / "d" / "p.parquet", df)
    ds = open_dataset(tmp_path / "d")
    with pytest.raises(DatasetError, match="acceptor_score"):
        ds.read_matrix(["A"], list(ds.schema.feature_columns))
    with pytest.raises(DatasetError, match="acceptor_score"):
        feature_matrix(ds.read_genes(["A"]), list(ds.schema.feature_columns))
    x, _ = ds.read_matrix(["A"], ["feat_a"])  # other columns still read
    assert np.isfinite(x).all()


def test_missing_feature_values_read_as_nan(tmp_path: pathlib.Path) -> None:
    df = _frame({"A": 4})
    df.loc[1, "feat_a"] = np.nan
    _write(tmp_path / "d" / "p.parquet", df)
    x, _ = open_dataset(tmp_path / "d").read_matrix(["A"], ["feat_a", "donor_score"])
    assert np.isnan(x[1, 0]) and np.isfinite(np.delete(x[:, 0], 1)).all()


# -- representative samples -------------------------------------------------------------


def _index_of(n_genes: int) -> GeneIndex:
    """An index of ``n_genes`` genes of growing size with splice-site counts independent of size."""
    genes = [f"g{i:04d}" for i in range(n_genes)]
    n_rows = np.arange(1, n_genes + 1) * 10
    sites = (np.arange(n_genes) * 7) % 13
    table = pd.DataFrame({
        "n_rows": n_rows, "n_neither": n_rows - 2 * sites, "n_donor": sites, "n_acceptor": sites,
        "files": [(i // 50,) for i in range(n_genes)],
    }, index=pd.Index(genes, dtype=object))
    return GeneIndex(table=table, files=tuple(f"f{i}.parquet" for i in range(-(-n_genes // 50))))


def test_representative_genes_are_deterministic_for_a_seed() -> None:
    index = _index_of(200)
    a = representative_genes(index, 0.2, seed=3)
    assert a == representative_genes(index, 0.2, seed=3)
    assert a == sorted(a) and len(set(a)) == len(a) == 40
    assert a != representative_genes(index, 0.2, seed=4)
    # the order of the index does not matter, only its content
    shuffled = GeneIndex(table=index.table.sample(frac=1, random_state=0), files=index.files)
    assert representative_genes(shuffled, 0.2, seed=3) == a


def test_sample_size_is_a_fraction_up_to_one_and_a_count_above() -> None:
    index = _index_of(200)
    assert len(representative_genes(index, 0.1)) == 20
    assert len(representative_genes(index, 30)) == 30
    assert len(representative_genes(index, 1)) == 1
    assert representative_genes(index, 1.0) == index.genes
    assert representative_genes(index, 5000) == index.genes
    assert sample_size(200, 0.001) == 1
    assert sample_size(200, 0.01, minimum=10) == 10
    for bad in (0, -0.5, "10", True, None):
        with pytest.raises(ConfigError, match="sample size"):
            sample_size(200, bad)


def test_representative_genes_are_stratified_by_size_and_splice_sites() -> None:
    index = _index_of(200)
    sample = representative_genes(index, 20, seed=0)
    rows = index.table.loc[sample, "n_rows"]
    quartile = pd.qcut(index.table["n_rows"], 4, labels=False).loc[sample]
    assert quartile.value_counts().reindex(range(4), fill_value=0).between(4, 6).all()
    assert rows.min() <= 500 and rows.max() >= 1500  # small and large genes both present
    sites = index.table.loc[sample, "n_donor"]
    assert sites.min() <= 3 and sites.max() >= 9
    # many seeds: every size quartile always gets its share, unlike a plain random draw
    for seed in range(20):
        q = pd.qcut(index.table["n_rows"], 4, labels=False).loc[representative_genes(index, 20, seed=seed)]
        assert q.value_counts().reindex(range(4), fill_value=0).between(4, 6).all(), seed


def test_read_sample_reads_only_the_files_holding_the_sampled_genes(spanning) -> None:
    root, sizes = spanning
    ds = open_dataset(root)
    with dask.config.set(scheduler="sync"):
        index = build_gene_index(ds)
    counting = dataclasses.replace(ds, fs=_CountingFS())
    _CountingFS.opened.clear()
    with dask.config.set(scheduler="sync"):
        sample = read_sample(counting, index, ["E", "A"], columns=["splice_type", "feat_a"])
    assert index.files_for(["E", "A"]) == [ds.files[0], ds.files[2]]
    assert sorted(set(_CountingFS.opened)) == [ds.files[0], ds.files[2]]
    assert list(sample.columns) == ["gene_id", "splice_type", "feat_a"]
    assert sample["gene_id"].tolist() == ["A"] * 5 + ["E"] * 2
    assert sample.groupby("gene_id").size().to_dict() == index.table.loc[["A", "E"], "n_rows"].to_dict()


def test_read_sample_of_no_genes_is_empty_and_of_unknown_genes_an_error(spanning) -> None:
    root, _ = spanning
    ds = open_dataset(root)
    with dask.config.set(scheduler="sync"):
        index = build_gene_index(ds)
        empty = read_sample(ds, index, [], columns=["feat_a"])
        assert list(empty.columns) == ["gene_id", "feat_a"] and len(empty) == 0
        with pytest.raises(DatasetError, match="Genes not in the dataset: Z"):
            read_sample(ds, index, ["A", "Z"])


def test_read_sample_returns_exactly_the_sampled_genes_rows(small_dataset: pathlib.Path) -> None:
    ds = open_dataset(small_dataset)
    with dask.config.set(scheduler="sync"):
        index = build_gene_index(ds)
        genes = representative_genes(index, 0.1, seed=5)
        sample = read_sample(ds, index, genes)
    assert len(genes) == 8
    assert sorted(sample["gene_id"].unique()) == genes
    assert len(sample) == index.rows(genes)
    assert sample.groupby("gene_id").size().to_dict() == index.table.loc[genes, "n_rows"].to_dict()
    labels = sample["splice_type"].value_counts().to_dict()
    assert {k: labels.get(k, 0) for k in LABEL_NAMES} == index.label_counts(genes)
    assert len(index.files_for(genes)) <= len(ds.files)
    pd.testing.assert_frame_equal(sample, ds.read_genes(genes), check_dtype=False)


# -- bad input through the CLI ----------------------------------------------------------


def _stderr(result) -> str:
    try:
        return result.stderr
    except ValueError:  # click < 8.2 mixes stderr into output
        return result.output


def _inspect_fails(path: pathlib.Path | str, watch: pathlib.Path, *extra: str) -> str:
    """Run ``metadask inspect``; check it fails cleanly and writes nothing; return the message."""
    before = _snapshot(watch)
    result = CliRunner().invoke(main, ["inspect", str(path), *extra])
    err = _stderr(result)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("metadask: error: ")
    assert "Traceback" not in result.output + err
    assert _snapshot(watch) == before
    return lines[0]


def test_cli_reports_a_nonexistent_path(tmp_path: pathlib.Path) -> None:
    msg = _inspect_fails(tmp_path / "nowhere", tmp_path)
    assert "nowhere" in msg and "does not exist" in msg


def test_cli_reports_an_empty_directory(tmp_path: pathlib.Path) -> None:
    (tmp_path / "empty").mkdir()
    msg = _inspect_fails(tmp_path / "empty", tmp_path)
    assert "No parquet files" in msg and "empty" in msg


def test_cli_reports_a_glob_that_matches_nothing(tmp_path: pathlib.Path) -> None:
    _write(tmp_path / "d" / "p.parquet", _frame({"A": 3}))
    msg = _inspect_fails(f"{tmp_path}/d/*.parq", tmp_path)
    assert "No parquet files match" in msg


@pytest.mark.parametrize("damage", ["random-bytes", "truncated", "empty-file"])
def test_cli_names_a_corrupt_parquet_file_among_good_ones(tmp_path: pathlib.Path, damage: str) -> None:
    root = tmp_path / "d"
    _write(root / "batch_00000.parquet", _frame({"A": 3}))
    good = _write(root / "batch_00002.parquet", _frame({"C": 3}))
    bad = root / "batch_00001.parquet"
    if damage == "random-bytes":
        bad.write_bytes(np.random.default_rng(0).bytes(5000))
    elif damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    else:
        bad.write_bytes(b"")
    msg = _inspect_fails(root, tmp_path)
    assert "batch_00001.parquet" in msg and "not a readable parquet file" in msg
    assert "batch_00000" not in msg and "batch_00002" not in msg


def test_cli_reports_a_missing_label_column(tmp_path: pathlib.Path) -> None:
    _write(tmp_path / "d" / "p.parquet", _frame({"A": 3}).drop(columns=["splice_type"]))
    msg = _inspect_fails(tmp_path / "d", tmp_path)
    assert "No label column 'splice_type'" in msg and "--label-column" in msg


def test_cli_reports_string_label_values_outside_the_known_set_with_counts(tmp_path: pathlib.Path) -> None:
    df = _frame({"A": 6, "B": 6})
    df.loc[[2, 3, 8], "splice_type"] = "intron"
    df.loc[[9], "splice_type"] = "exon"
    _write(tmp_path / "d" / "p.parquet", df)
    msg = _inspect_fails(tmp_path / "d", tmp_path)
    assert "'intron' (3 rows)" in msg and "'exon' (1 rows)" in msg
    assert "splice_type" in msg and "p.parquet" in msg


def test_cli_reports_integer_label_values_outside_0_1_2_with_counts(tmp_path: pathlib.Path) -> None:
    df = _frame({"A": 6}, labels="int")
    df.loc[[2, 3], "splice_type"] = 3
    df.loc[[4], "splice_type"] = -1
    _write(tmp_path / "d" / "p.parquet", df)
    msg = _inspect_fails(tmp_path / "d", tmp_path)
    assert "3 (2 rows)" in msg and "-1 (1 rows)" in msg and "0/1/2" in msg


def test_cli_reports_a_missing_gene_column(tmp_path: pathlib.Path) -> None:
    _write(tmp_path / "d" / "p.parquet", _frame({"A": 3}).drop(columns=["gene_id"]))
    msg = _inspect_fails(tmp_path / "d", tmp_path)
    assert "No gene column 'gene_id'" in msg and "--gene-column" in msg


def test_cli_reports_a_gene_column_with_nulls(tmp_path: pathlib.Path) -> None:
    _write(tmp_path / "d" / "a.parquet", _frame({"A": 3}))
    df = _frame({"B": 5})
    df["gene_id"] = df["gene_id"].astype(object)
    df.loc[[1, 3], "gene_id"] = None
    _write(tmp_path / "d" / "b.parquet", df)
    msg = _inspect_fails(tmp_path / "d", tmp_path)
    assert "'gene_id' has 2 null values" in msg and "b.parquet" in msg


def test_cli_reports_a_feature_column_of_strings(tmp_path: pathlib.Path) -> None:
    df = _frame({"A": 3})
    df["chromatin_state"] = "open"
    _write(tmp_path / "d" / "p.parquet", df)
    msg = _inspect_fails(tmp_path / "d", tmp_path)
    assert "chromatin_state" in msg and "numeric" in msg


def test_cli_reports_conflicting_column_types_between_files(tmp_path: pathlib.Path) -> None:
    _write(tmp_path / "d" / "a.parquet", _frame({"A": 3}))
    df = _frame({"B": 3})
    df["feat_a"] = df["feat_a"].astype(str)
    _write(tmp_path / "d" / "b.parquet", df)
    msg = _inspect_fails(tmp_path / "d", tmp_path)
    assert "conflict" in msg and "feat_a" in msg and "a.parquet" in msg and "b.parquet" in msg


def test_cli_reports_a_non_kmer_column_missing_from_some_files(tmp_path: pathlib.Path) -> None:
    _write(tmp_path / "d" / "a.parquet", _frame({"A": 3}))
    _write(tmp_path / "d" / "b.parquet", _frame({"B": 3}).drop(columns=["donor_score"]))
    msg = _inspect_fails(tmp_path / "d", tmp_path)
    assert "donor_score" in msg and "b.parquet" in msg


def test_cli_lets_the_original_error_through_with_debug(tmp_path: pathlib.Path) -> None:
    result = CliRunner().invoke(main, ["--debug", "inspect", str(tmp_path / "nowhere")])
    assert isinstance(result.exception, DatasetError)
    assert result.exit_code != 0


# -- make-dataset and inspect -----------------------------------------------------------


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("made") / "synth"
    result = CliRunner().invoke(main, ["make-dataset", str(out), "--genes", "30", "--genes-per-file", "10",
                                       "--seed", "3"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "Wrote 30 genes" in result.stdout
    return out


def test_make_dataset_then_inspect_json_reports_the_right_figures(made: pathlib.Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(made), "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    info = json.loads(result.stdout)

    with open(made / "master" / "gene_manifest.csv", newline="") as fh:
        manifest = list(csv.DictReader(fh))
    files = sorted((made / "master").glob("*.parquet"))
    schemas = {str(f): pq.read_schema(f).names for f in files}
    union = list(dict.fromkeys(c for names in schemas.values() for c in names))
    kmers = [c for c in union if re.fullmatch(r"3mer_[ACGTN]+", c)]
    base = [c for c in union if c in ("donor_score", "acceptor_score", "neither_score")]
    other = [c for c in union if c not in SYNTHETIC_METADATA and c not in kmers and c not in base]
    drifting = [c for c in kmers if any(c not in names for names in schemas.values())]
    rows = sum(int(r["n_rows"]) for r in manifest)

    assert info["genes"] == len(manifest) == 30
    assert info["rows"] == rows
    assert info["files"] == len(files) == 3
    assert info["genes_spanning_files"] == 0
    assert info["features"] == len(kmers) + len(base) + len(other)
    assert info["feature_families"] == {"base_scores": 3, "3-mers": len(kmers), "other": len(other)}
    assert len(kmers) > 64  # the 64 ACGT 3-mers plus N-containing ones
    assert info["schema_drift"]["kmer_columns_missing_in_some_files"] == len(drifting) > 0
    assert set(info["schema_drift"]["columns"]) == set(drifting[:50])
    assert info["schema_drift"]["files_affected"] == sum(
        1 for names in schemas.values() if any(c not in names for c in drifting))
    assert info["labels"] == {
        "neither": rows - sum(int(r["n_donor"]) + int(r["n_acceptor"]) for r in manifest),
        "donor": sum(int(r["n_donor"]) for r in manifest),
        "acceptor": sum(int(r["n_acceptor"]) for r in manifest),
    }
    assert 0.8 < info["label_fractions"]["neither"] < 0.97
    sizes = [int(r["n_rows"]) for r in manifest]
    assert info["rows_per_gene"]["min"] == min(sizes) and info["rows_per_gene"]["max"] == max(sizes)
    assert info["training_matrix_bytes"] == rows * info["features"] * 4
    assert info["label_encoding"] == "string"


def test_inspect_text_output_states_genes_rows_files_features_and_drift(made: pathlib.Path) -> None:
    as_json = json.loads(CliRunner().invoke(main, ["inspect", str(made), "--json"]).stdout)
    result = CliRunner().invoke(main, ["inspect", str(made / "master")])
    assert result.exit_code == 0, (result.output, result.exception)
    text = result.stdout
    assert re.search(r"^Files: +3$", text, re.M)
    assert re.search(rf"^Genes: +30 \(0 span several files\)$", text, re.M)
    assert re.search(rf"^Rows: +{as_json['rows']:,} ", text, re.M)
    assert re.search(rf"^Features: +{as_json['features']:,} \(base_scores 3, 3-mers \d+, other \d+\)$", text, re.M)
    drift = as_json["schema_drift"]
    assert (f"{drift['kmer_columns_missing_in_some_files']} k-mer columns missing in "
            f"{drift['files_affected']} files (read as 0)") in text
    assert "Training matrix:" in text and "MiB" in text


def test_inspect_leaves_the_dataset_directory_untouched(made: pathlib.Path) -> None:
    before = _snapshot(made)
    assert CliRunner().invoke(main, ["inspect", str(made)]).exit_code == 0
    assert _snapshot(made) == before


def test_inspect_honours_renamed_label_and_gene_columns(tmp_path: pathlib.Path) -> None:
    df = _frame({"A": 4, "B": 5}, labels="int").rename(columns={"splice_type": "site", "gene_id": "locus"})
    _write(tmp_path / "d" / "p.parquet", df)
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "d"), "--json",
                                       "--label-column", "site", "--gene-column", "locus"])
    assert result.exit_code == 0, (result.output, result.exception)
    info = json.loads(result.stdout)
    assert (info["genes"], info["rows"], info["label_encoding"]) == (2, 9, "integer")
    assert info["labels"] == {"neither": 5, "donor": 2, "acceptor": 2}


def test_inspect_reads_the_real_fly_dataset(real_fly_3mer: pathlib.Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(real_fly_3mer), "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    info = json.loads(result.stdout)
    ds = open_dataset(real_fly_3mer)
    assert info["rows"] == ds.schema.n_rows > 0
    assert info["feature_families"]["3-mers"] == 64
    assert sum(info["labels"].values()) == info["rows"]
    assert not set(info["metadata_columns"]) - set(METADATA_COLUMNS)
