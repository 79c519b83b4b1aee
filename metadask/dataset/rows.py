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
    cols = [c for c in (*ID_COLUMNS, dataset.label_column, *BASE_SCORE_COLUMNS) if c in dataset.schema.columns]
    x, meta = dataset.read_matrix(gs.genes, features, files=gs.files, columns=cols)
    y = label_vector(meta, dataset.label_column)
    return x, y, meta
