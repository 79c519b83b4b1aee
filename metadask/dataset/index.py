"""The gene index: per gene, its row count, label counts and the files that hold it.

Built in one pass that reads only the gene and label columns, one task per file on the
workers (or local threads when no cluster is running). Cached as parquet next to the run so
later stages and ``--resume`` reuse it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from metadask.cluster.watch import compute
from metadask.dataset.schema import LABELS, encode_labels
from metadask.dataset.source import Dataset, gene_keys
from metadask.dataset.validate import SUMMARY_COLUMNS, check_across_files, check_file, row_check_columns
from metadask.errors import DatasetError, preview
from metadask.io import atomic_write

log = logging.getLogger(__name__)

INDEX_FORMAT = 2  # 2: per-gene position range (pos_min / pos_max) for the full-body layout
_COUNT_COLUMNS = [f"n_{name}" for name in LABELS]


def _index_file(dataset: Dataset, file_id: int) -> pd.DataFrame:
    file = dataset.files[file_id]
    checked = row_check_columns(dataset)
    labelled = dataset.schema.has_labels  # unlabelled data (to score): label counts stay 0
    df = dataset.read_file(file, [dataset.gene_column, *([dataset.label_column] if labelled else []), *checked])
    genes = df[dataset.gene_column]
    if genes.isna().any():
        raise DatasetError(
            f"Gene column '{dataset.gene_column}' has {int(genes.isna().sum())} null values in "
            f"'{file}'. Every row needs a gene id."
        )
    onehot = np.zeros((len(df), 3), dtype=np.int64)
    if labelled:
        try:
            codes = encode_labels(df[dataset.label_column], dataset.label_column)
        except DatasetError as exc:
            raise DatasetError(f"{exc} (in '{file}')") from None
        onehot[np.arange(len(df)), codes] = 1
    counts = pd.DataFrame(onehot, columns=_COUNT_COLUMNS)
    counts["n_rows"] = 1
    counts["gene"] = keys = gene_keys(genes)
    out = counts.groupby("gene", sort=True).sum()
    out["file_id"] = file_id
    # duplicated rows, genes disagreeing on strand / chrom, bad base scores (same read)
    out = out.join(check_file(df[checked], keys, file, dataset.schema.base_score_columns))
    return out.reset_index()


@dataclass(frozen=True)
class GeneIndex:
    """Per-gene row and label counts, and which files hold each gene.

    ``table`` is indexed by gene id (sorted) with columns ``n_rows``, ``n_neither``,
    ``n_donor``, ``n_acceptor``, ``files`` (a tuple of file positions in the dataset) and,
    when the dataset has a ``position`` column, ``pos_min`` / ``pos_max`` (the gene's
    position range, from which :attr:`contiguous` and :attr:`layout` follow). The label
    counts are 0 for an unlabelled dataset (``dataset.schema.has_labels`` false).
    """

    table: pd.DataFrame
    files: tuple[str, ...]

    @property
    def genes(self) -> list[str]:
        return list(self.table.index)

    @property
    def n_genes(self) -> int:
        return len(self.table)

    @property
    def n_rows(self) -> int:
        return int(self.table["n_rows"].sum())

    @property
    def contiguous(self) -> pd.Series | None:
        """Per gene: are its rows every position from ``pos_min`` to ``pos_max`` (a full body)?

        ``n_rows == pos_max - pos_min + 1`` (positions are unique per gene, which the index
        pass checks). ``None`` when the dataset has no ``position`` column.
        """
        if "pos_min" not in self.table:
            return None
        span = self.table["pos_max"].astype(float) - self.table["pos_min"].astype(float) + 1
        return (self.table["n_rows"].astype(float) == span).rename("contiguous")

    @property
    def is_full_body(self) -> bool | None:
        """True when every gene is contiguous, False when some is not, None without positions."""
        contiguous = self.contiguous
        return None if contiguous is None else bool(contiguous.all())

    @property
    def layout(self) -> str:
        """``"full-body"`` (every position of every gene), ``"sampled"`` or ``"unknown"``."""
        full = self.is_full_body
        return "unknown" if full is None else "full-body" if full else "sampled"

    def label_counts(self, genes: Iterable[str] | None = None) -> dict[str, int]:
        t = self.table if genes is None else self.table.loc[list(genes)]
        return {name: int(t[f"n_{name}"].sum()) for name in LABELS}

    def rows(self, genes: Iterable[str]) -> int:
        return int(self.table.loc[list(genes), "n_rows"].sum())

    def files_for(self, genes: Iterable[str]) -> list[str]:
        """The files holding any of ``genes``, in dataset order."""
        ids = sorted({i for fs in self.table.loc[list(genes), "files"] for i in fs})
        return [self.files[i] for i in ids]

    # -- persistence --------------------------------------------------------------------
    def save(self, path: str | os.PathLike, fingerprint: Sequence | None = None) -> None:
        t = self.table.reset_index().rename(columns={"index": "gene"})
        t["files"] = [list(map(int, f)) for f in t["files"]]
        table = pa.Table.from_pandas(t, preserve_index=False)
        meta = {"metadask_index": json.dumps({"format": INDEX_FORMAT, "files": list(self.files), "fingerprint": fingerprint})}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
        # the cache usually lives in a run's not-yet-created cache/ folder (atomic_write creates it)
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike, fingerprint: Sequence | None = None) -> GeneIndex | None:
        """Load a cached index; ``None`` when absent or when the dataset changed since."""
        if not os.path.exists(path):
            return None
        try:
            table = pq.read_table(path)
            meta = json.loads(table.schema.metadata[b"metadask_index"])
        except (pa.ArrowInvalid, OSError, KeyError, ValueError):
            log.warning("Ignoring unreadable gene index cache %s", path)
            return None
        if meta.get("format") != INDEX_FORMAT or (fingerprint is not None and meta.get("fingerprint") != list(map(list, fingerprint))):
            return None
        t = table.to_pandas().set_index("gene")
        t.index = t.index.astype(object)
        t.index.name = None
        t["files"] = [tuple(int(i) for i in f) for f in t["files"]]
        return cls(table=t, files=tuple(meta["files"]))


def build_gene_index(dataset: Dataset, *, cache: str | os.PathLike | None = None) -> GeneIndex:
    """Index every gene of ``dataset`` in one pass over the gene and label columns.

    Runs one task per file on the current Dask scheduler (the distributed client when one is
    active). With ``cache``, a matching cached index is reused and a new one saved there.
    """
    fingerprint = dataset.fingerprint() if cache is not None else None
    if cache is not None:
        cached = GeneIndex.load(cache, fingerprint)
        if cached is not None and cached.files == dataset.files:
            log.info("Reusing gene index %s (%d genes)", cache, cached.n_genes)
            return cached
    tasks = [dask.delayed(_index_file)(dataset, i, dask_key_name=f"metadask-index-{i}-{dataset.url}") for i in range(len(dataset.files))]
    parts = compute(tasks, "the gene-index tasks")
    per_file = pd.concat(parts, ignore_index=True)
    if per_file.empty:
        raise DatasetError(f"Dataset '{dataset.url}' has no rows. Point --dataset at a non-empty dataset.")
    check_across_files(dataset, per_file[["gene", "file_id", *(c for c in SUMMARY_COLUMNS if c in per_file)]])
    grouped = per_file.groupby("gene", sort=True)
    table = grouped[[*_COUNT_COLUMNS, "n_rows"]].sum()
    table["files"] = grouped["file_id"].agg(lambda s: tuple(sorted(int(i) for i in s)))
    ranges = []
    if "pos_min" in per_file:  # the position range, over every file the gene spans
        table["pos_min"], table["pos_max"] = grouped["pos_min"].min(), grouped["pos_max"].max()
        ranges = ["pos_min", "pos_max"]
    table = table[["n_rows", *_COUNT_COLUMNS, "files", *ranges]]
    table.index = table.index.astype(object)
    table.index.name = None
    index = GeneIndex(table=table, files=dataset.files)
    if index.n_rows != dataset.schema.n_rows:
        raise DatasetError(
            f"Indexed {index.n_rows} rows but the parquet footers say {dataset.schema.n_rows}. "
            "A file changed while it was read; retry."
        )
    if cache is not None:
        index.save(cache, fingerprint)
    return index


def check_genes(index: GeneIndex, genes: Iterable[str]) -> None:
    missing = [g for g in genes if g not in index.table.index]
    if missing:
        raise DatasetError(f"Genes not in the dataset: {preview(missing)}.")
