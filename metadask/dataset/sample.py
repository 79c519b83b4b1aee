"""Representative gene samples: deterministic, stratified by gene size and splice-site count.

Sampling picks genes from the gene index alone; reading a sample reads only the files that
hold those genes, with a parquet filter on the gene column, one task per file.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask
import numpy as np
import pandas as pd

from metadask.cluster.watch import compute
from metadask.dataset.index import GeneIndex, check_genes
from metadask.dataset.source import Dataset
from metadask.errors import option_error


def sample_size(n_genes: int, size: float | int, *, minimum: int = 0) -> int:
    """Genes to sample: a fraction (0 < size <= 1) or a count (> 1), at least ``minimum``."""
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0:
        raise option_error("sample size", "must be a fraction in (0, 1] or a gene count >= 1", size, "Pass e.g. 0.1 or 200.")
    n = int(round(size * n_genes)) if size <= 1 and not (isinstance(size, int) and size == 1) else int(size)
    return max(1, min(n_genes, max(n, minimum)))


def representative_genes(index: GeneIndex, size: float | int, *, seed: int = 42, minimum: int = 0) -> list[str]:
    """A deterministic sample of genes, stratified by row count and splice-site count.

    Genes are binned into quartiles of row count and of splice-site count (up to 16 strata);
    each stratum contributes in proportion to its size (largest remainders), genes drawn with
    a generator seeded by ``seed``. The same index and seed give the same genes on any machine.
    """
    t = index.table.sort_index()
    n = sample_size(len(t), size, minimum=minimum)
    if n >= len(t):
        return list(t.index)
    sites = t["n_donor"] + t["n_acceptor"]
    size_bin = pd.qcut(t["n_rows"].rank(method="first"), q=min(4, len(t)), labels=False)
    site_bin = pd.qcut(sites.rank(method="first"), q=min(4, len(t)), labels=False)
    strata = (size_bin * 4 + site_bin).to_numpy()
    keys, counts = np.unique(strata, return_counts=True)
    exact = counts * n / len(t)
    alloc = np.floor(exact).astype(int)
    remainder = n - alloc.sum()
    alloc[np.argsort(-(exact - alloc), kind="stable")[:remainder]] += 1
    rng = np.random.default_rng(seed)
    genes = np.asarray(t.index, dtype=object)
    chosen: list[str] = []
    for key, k in zip(keys, alloc):
        members = genes[strata == key]
        if k:
            chosen.extend(rng.choice(members, size=k, replace=False).tolist())
    return sorted(chosen)


def read_sample(
    dataset: Dataset,
    index: GeneIndex,
    genes: Sequence[str],
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read only the rows of ``genes`` (only the files holding them), as one pandas frame."""
    genes = sorted(set(genes))
    check_genes(index, genes)
    files = index.files_for(genes)
    cols = None if columns is None else list(dict.fromkeys([dataset.gene_column, *columns]))
    parts = compute([dask.delayed(dataset.read_file)(f, cols, genes) for f in files], "the reads of the sample genes")
    if not parts:  # no genes: an empty frame with the right columns
        parts = (dataset.read_file(dataset.files[0], cols, genes=[]),)
    df = pd.concat(list(parts), ignore_index=True)
    order = np.argsort(df[dataset.gene_column].to_numpy(dtype=object), kind="stable")
    df = df.iloc[order].reset_index(drop=True)
    return df
