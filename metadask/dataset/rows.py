"""A gene set's rows as model inputs: the one read every training, analysis and evaluation task uses.

A :class:`GeneSet` names genes and the files that hold them (from the gene index), so a task
opens only those files; :func:`read_rows` returns the float32 matrix, the label codes and the
id columns in canonical row order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from metadask.dataset.index import GeneIndex
from metadask.dataset.schema import BASE_SCORE_COLUMNS
from metadask.dataset.source import Dataset, gene_keys, label_vector
from metadask.errors import DatasetError

ID_COLUMNS = ("position",)


@dataclass(frozen=True)
class GeneSet:
    """Genes (sorted), the files that hold them and, from the gene index, each gene's rows.

    With ``rows`` a read opens each file once even when a gene spans files
    (:meth:`Dataset.read_matrix`); build it with :func:`gene_set`.
    """

    genes: tuple[str, ...]
    files: tuple[str, ...]
    rows: tuple[int, ...] = ()


def gene_set(index: GeneIndex, genes: Sequence[str]) -> GeneSet:
    """The :class:`GeneSet` of ``genes``: their files and row counts from ``index``."""
    genes = tuple(sorted({str(g) for g in genes}))
    if not genes:
        return GeneSet((), ())
    return GeneSet(genes, tuple(index.files_for(genes)),
                   tuple(int(n) for n in index.table.loc[list(genes), "n_rows"]))


def read_rows(dataset: Dataset, gs: GeneSet, features: Sequence[str]) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(float32 matrix, label codes, id frame) of a gene set, in canonical row order.

    The id frame holds the ids, labels, base scores and (weighted data) the weight column.
    """
    cols = [c for c in (*ID_COLUMNS, dataset.label_column, *BASE_SCORE_COLUMNS, dataset.weight_column)
            if c in dataset.schema.columns]
    x, meta = dataset.read_matrix(gs.genes, features, files=gs.files, columns=cols, gene_rows=gs.rows or None)
    y = label_vector(meta, dataset.label_column)
    return x, y, meta


def gene_partitions(index: GeneIndex, genes: Sequence[str], max_rows: int | None = None) -> list[tuple[GeneSet, int]]:
    """Gene-aligned partitions of ``genes``: (gene set, rows) per group of genes sharing files.

    Genes held by the same files form one partition (one per file in the usual layout), in
    file order; with ``max_rows`` a group is cut into consecutive runs of whole genes of at
    most ``max_rows`` rows (a gene larger than that is a partition of its own). A gene is
    never split between partitions, and the result depends only on the index and ``genes``.
    """
    table = index.table.loc[sorted(genes), ["files", "n_rows"]]
    groups: dict[tuple[int, ...], list[tuple[str, int]]] = {}
    for gene, files, n in zip(table.index, table["files"], table["n_rows"]):
        groups.setdefault(tuple(files), []).append((str(gene), int(n)))
    out: list[tuple[GeneSet, int]] = []

    def close(run: list[tuple[str, int]], paths: tuple[str, ...]) -> None:
        out.append((GeneSet(tuple(g for g, _ in run), paths, tuple(n for _, n in run)), sum(n for _, n in run)))

    for files, members in sorted(groups.items()):
        paths = tuple(index.files[i] for i in files)
        run: list[tuple[str, int]] = []
        rows = 0
        for gene, n in members:
            if run and max_rows is not None and rows + n > max_rows:
                close(run, paths)
                run, rows = [], 0
            run.append((gene, n))
            rows += n
        if run:
            close(run, paths)
    return out


def gene_frame(dataset: Dataset, index: GeneIndex, columns: Sequence[str] | None = None, *,
               genes: Sequence[str] | None = None, max_rows: int | None = None):  # -> dask.dataframe.DataFrame
    """The dataset as a lazy Dask dataframe partitioned by whole genes, indexed by gene id.

    Partition ``i`` holds the rows of ``gene_partitions(index, genes, max_rows)[i]``, the same
    gene sets the training, SHAP and evaluation tasks read (:func:`read_rows` is that read
    decoded straight into float32), in canonical row order; a gene is never split. Divisions
    are known (first gene of each partition, then the last gene) when the files hold sorted,
    disjoint gene ranges, as the builder writes them; otherwise they are unknown. Only
    ``columns`` (default: every column) are read, each file once per partition, k-mers
    harmonised by :meth:`Dataset._read_table`.
    """
    import dask.dataframe as dd

    cols = [c for c in (list(dataset.schema.columns) if columns is None else list(columns)) if c != dataset.gene_column]
    parts = [gs for gs, _ in gene_partitions(index, index.genes if genes is None else genes, max_rows)]
    if not parts:
        raise DatasetError("gene_frame needs at least one gene (the gene list is empty).")
    meta = _GeneSetReader(dataset, cols)(GeneSet((), dataset.files[:1]))
    ordered = all(a.genes[-1] < b.genes[0] for a, b in zip(parts, parts[1:]))
    divisions = ([gs.genes[0] for gs in parts] + [parts[-1].genes[-1]]) if parts and ordered else None
    return dd.from_map(_GeneSetReader(dataset, cols), parts, meta=meta, divisions=divisions, enforce_metadata=False)


class _GeneSetReader:
    """Picklable partition reader of :func:`gene_frame`: a gene set's rows, indexed by gene id."""

    def __init__(self, dataset: Dataset, columns: list[str]):
        self.dataset, self.columns = dataset, columns

    def __call__(self, gs: GeneSet) -> pd.DataFrame:
        ds = self.dataset
        df = ds.read_genes(gs.genes, [ds.gene_column, *self.columns], files=gs.files)
        df.index = pd.Index(gene_keys(df.pop(ds.gene_column)), dtype=object, name=ds.gene_column)
        return df
