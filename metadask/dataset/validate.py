"""Dataset checks beyond the schema: column names, duplicated rows, genes, base scores.

:func:`check_column_names` runs when a dataset is opened (parquet footers only): names must
be non-blank and unique. The other checks ride on the gene index pass, which already reads
every file's gene and label columns once on the workers; it reads a few more small columns
of the same files for them:

* **duplicated rows**: a (gene, position) pair (plus ``transcript_id`` when the dataset has
  one) may occur only once, within a file and across the files a gene spans;
* **inconsistent genes**: every row of a gene must name the same ``strand`` and ``chrom``;
* **base-model scores** (``donor_score`` ...) must be probabilities: no NaN, nothing
  outside [0, 1]. They are protected features and define the base model that the
  meta-model is compared with, so a corrupt value is an input error, not a missing value.

Each check raises a :class:`~metadask.errors.DatasetError` naming the file, column, genes and
the fix. :func:`check_file` works on one file's rows and returns a small per-gene summary;
:func:`check_across_files` compares those summaries for genes that span files (rare: the
upstream layout keeps genes whole), reading positions again only where two files' position
ranges of one gene overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from metadask.dataset.schema import gene_keys
from metadask.errors import DatasetError, preview

if TYPE_CHECKING:
    from metadask.dataset.source import Dataset

POSITION_COLUMN = "position"
TRANSCRIPT_COLUMN = "transcript_id"
CONSISTENT_COLUMNS: tuple[str, ...] = ("strand", "chrom")
"""Columns every row of one gene must agree on."""
SCORE_TOLERANCE = 1e-6
"""Base scores may stray this far outside [0, 1] (float rounding in upstream tools)."""

SUMMARY_COLUMNS: tuple[str, ...] = ("pos_min", "pos_max", *CONSISTENT_COLUMNS)


def check_column_names(file_schemas: Sequence[tuple[str, Any, int]]) -> None:
    """Every file's column names must be non-blank and unique (from the parquet footers).

    A repeated name makes reading a column by name ambiguous; a blank name cannot be named
    in ``--exclude-features`` or a model manifest.
    """
    for file, schema, _ in file_schemas:
        names = list(schema.names)
        blank = [i for i, n in enumerate(names) if not n.strip()]
        if blank:
            raise DatasetError(
                f"'{file}' has a column with a blank name (column {blank[0] + 1} of {len(names)}). "
                "Give every column a name (or drop it) and rewrite the file."
            )
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise DatasetError(
                f"'{file}' has repeated column names: {preview(repeated)}. "
                "Column names must be unique within a file; rename or drop the copies."
            )


def row_check_columns(dataset: Dataset) -> list[str]:
    """The extra columns the gene index pass reads for these checks (those the dataset has)."""
    cols = dataset.schema.columns
    wanted = [POSITION_COLUMN, TRANSCRIPT_COLUMN, *CONSISTENT_COLUMNS, *dataset.schema.base_score_columns]
    return [c for c in wanted if c in cols and c not in (dataset.gene_column, dataset.label_column)]


def _row_keys(df: pd.DataFrame, genes: np.ndarray) -> pd.DataFrame | None:
    if POSITION_COLUMN not in df:
        return None
    keys = pd.DataFrame({"gene": genes, "position": df[POSITION_COLUMN].to_numpy()})
    if TRANSCRIPT_COLUMN in df:
        keys["transcript"] = df[TRANSCRIPT_COLUMN].to_numpy()
    return keys


def _duplicate_error(keys: pd.DataFrame, where: str) -> DatasetError:
    dup = keys[keys.duplicated(keep="first")]
    shown = preview((f"{g} at {p}" for g, p in zip(dup["gene"], dup["position"])), 5)
    what = "gene, transcript_id and position" if "transcript" in keys else "gene and position"
    return DatasetError(
        f"{where} has {len(dup)} duplicated rows (same {what}): {shown}. "
        "Each position of a gene must occur once; remove the duplicates and rerun."
    )


def check_base_scores(df: pd.DataFrame, columns: Sequence[str], file: str) -> None:
    """Base-model scores must be probabilities: no NaN, nothing outside [0, 1]."""
    for c in columns:
        v = df[c].to_numpy(dtype=np.float64, na_value=np.nan)
        nan = np.isnan(v)
        if nan.any():
            raise DatasetError(
                f"Base-model score column '{c}' has {int(nan.sum())} missing (NaN) values in '{file}'. "
                "Base scores must be probabilities in [0, 1]; fix or regenerate the upstream scores."
            )
        bad = (v < -SCORE_TOLERANCE) | (v > 1 + SCORE_TOLERANCE)
        if bad.any():
            raise DatasetError(
                f"Base-model score column '{c}' has {int(bad.sum())} values outside [0, 1] in '{file}' "
                f"(min {v.min():.6g}, max {v.max():.6g}). Base scores must be probabilities; fix or "
                "regenerate the upstream scores."
            )


def check_file(df: pd.DataFrame, genes: np.ndarray, file: str, base_scores: Sequence[str]) -> pd.DataFrame:
    """Check one file's rows; return per gene ``pos_min``, ``pos_max``, ``strand``, ``chrom``.

    ``df`` holds the columns of :func:`row_check_columns`; ``genes`` the rows' gene keys.
    """
    check_base_scores(df, [c for c in base_scores if c in df], file)
    keys = _row_keys(df, genes)
    if keys is not None and keys.duplicated().any():
        raise _duplicate_error(keys, f"'{file}'")
    summary = pd.DataFrame(index=pd.Index(sorted(set(genes)), dtype=object))
    by_gene = pd.Series(genes)
    for c in CONSISTENT_COLUMNS:
        if c not in df:
            continue
        values = pd.Series(df[c].to_numpy(), index=by_gene.index)
        n = values.groupby(by_gene.to_numpy()).nunique(dropna=False)
        if (n > 1).any():
            bad = list(n.index[n > 1])
            g = bad[0]
            seen = sorted(map(str, values[by_gene.to_numpy() == g].unique()))
            raise DatasetError(
                f"Genes whose rows disagree on '{c}' in '{file}': {preview(bad, 5)} (e.g. {g}: {', '.join(seen)}). "
                f"Every row of a gene must have one {c}; fix the rows or split the gene id."
            )
        summary[c] = values.groupby(by_gene.to_numpy()).first().astype(str)
    if keys is not None:
        pos = keys.groupby("gene")["position"]
        summary["pos_min"], summary["pos_max"] = pos.min(), pos.max()
    return summary


def check_across_files(dataset: Dataset, per_file: pd.DataFrame) -> None:
    """Check genes that span files: one strand / chrom, and no position in two files.

    ``per_file`` has one row per (gene, file) with ``gene``, ``file_id`` and the columns of
    :func:`check_file`'s summary.
    """
    spans = per_file[per_file.duplicated("gene", keep=False)]
    if spans.empty:
        return
    for c in CONSISTENT_COLUMNS:
        if c not in spans:
            continue
        n = spans.groupby("gene")[c].nunique(dropna=False)
        if (n > 1).any():
            g = n.index[n > 1][0]
            rows = spans[spans["gene"] == g]
            detail = ", ".join(f"{v} in '{dataset.files[int(f)]}'" for v, f in zip(rows[c], rows["file_id"]))
            raise DatasetError(
                f"Gene {g} has rows in {len(rows)} files that disagree on '{c}' ({detail}). "
                f"Every row of a gene must have one {c}; fix the rows or split the gene id."
            )
    if "pos_min" not in spans:
        return
    overlapping = []
    for g, rows in spans.sort_values(["gene", "pos_min"]).groupby("gene", sort=True):
        lo, hi = rows["pos_min"].to_numpy(), rows["pos_max"].to_numpy()
        if (lo[1:] <= np.maximum.accumulate(hi)[:-1]).any():
            overlapping.append(g)
    if not overlapping:
        return
    # position ranges overlap: read those genes' positions (small) and look for repeats
    cols = [POSITION_COLUMN] + ([TRANSCRIPT_COLUMN] if TRANSCRIPT_COLUMN in dataset.schema.columns else [])
    files = sorted({dataset.files[int(f)] for f in spans.loc[spans["gene"].isin(overlapping), "file_id"]})
    rows = dataset.read_genes(overlapping, [dataset.gene_column, *cols], files=files)
    keys = _row_keys(rows, gene_keys(rows[dataset.gene_column]))
    if keys is not None and keys.duplicated().any():
        raise _duplicate_error(keys, f"Dataset '{dataset.url}' (genes spanning {len(files)} files)")
