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
from metadask.dataset.source import Dataset, label_vector

ID_COLUMNS = ("position",)


@dataclass(frozen=True)
class GeneSet:
    """Genes and the files that hold them (from the gene index)."""

    genes: tuple[str, ...]
    files: tuple[str, ...]


def read_rows(dataset: Dataset, gs: GeneSet, features: Sequence[str]) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(float32 matrix, label codes, id frame) of a gene set, in canonical row order."""
    cols = [c for c in (*ID_COLUMNS, dataset.label_column, *BASE_SCORE_COLUMNS, dataset.weight_column)
            if c in dataset.schema.columns]
    x, meta = dataset.read_matrix(gs.genes, features, files=gs.files, columns=cols)
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
    for files, members in sorted(groups.items()):
        paths = tuple(index.files[i] for i in files)
        run: list[str] = []
        rows = 0
        for gene, n in members:
            if run and max_rows is not None and rows + n > max_rows:
                out.append((GeneSet(tuple(run), paths), rows))
                run, rows = [], 0
            run.append(gene)
            rows += n
        if run:
            out.append((GeneSet(tuple(run), paths), rows))
    return out
