"""Dataset schema: which columns are labels, genes, metadata, base scores, features and k-mers.

The schema is read from parquet footers only (no row data). Files may carry different k-mer
sets (k-mers containing N occur only where an N occurs): the union is used and a missing
k-mer count reads as 0. Any other difference between files is an input error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from metadask.errors import DatasetError, preview

LABELS: tuple[str, ...] = ("neither", "donor", "acceptor")
"""Class names in code order: 0 = neither, 1 = donor, 2 = acceptor."""

LABEL_CODES: dict[str, int] = {name: code for code, name in enumerate(LABELS)}

BASE_SCORE_COLUMNS: tuple[str, ...] = ("neither_score", "donor_score", "acceptor_score")
"""The base model's per-class scores, in class-code order."""

LEAKY_METADATA: tuple[str, ...] = ("pred_type", "true_position", "predicted_position")
"""Upstream bookkeeping columns derived from the label: never features."""

METADATA_COLUMNS: frozenset[str] = frozenset(
    {
        "gene_id",
        "transcript_id",
        "gene_name",
        "chrom",
        "strand",
        "position",
        "absolute_position",
        "window_start",
        "window_end",
        "gene_type",
        "sequence",
        "splice_type",
        # bookkeeping that upstream tooling drops before training: a constant and a
        # redundant copy of max(donor_score, acceptor_score)
        "transcript_count",
        "score",
        *LEAKY_METADATA,
        # per-row weight of a sampled dataset: 1 / the row's inclusion probability
        "sample_weight",
        # the hard-negative mining round that added a row (0: the sampling rules kept it)
        "mined_round",
    }
)
"""Identifier, location and bookkeeping columns: never used as features."""

MINED_COLUMN = "mined_round"
"""Hard-negative mining round that added a row to a library sample (metadata; see metadask.mining)."""

WEIGHT_COLUMN = "sample_weight"
"""Inverse inclusion probability of a row sampled from a full body (metadata, never a feature)."""

KMER_PATTERN = re.compile(r"^\d+mer_[ACGTN]+$")

_NUMERIC = "numeric"


def _type_family(t: pa.DataType) -> str:
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return _NUMERIC
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_dictionary(t):
        return _type_family(t.value_type)
    if pa.types.is_null(t):
        return "null"
    return str(t)


def is_kmer(name: str) -> bool:
    """True for k-mer count columns such as ``3mer_ACG`` or ``5mer_ANGTC``."""
    return KMER_PATTERN.match(name) is not None


@dataclass(frozen=True)
class Schema:
    """What metadask knows about a dataset's columns, from parquet footers alone."""

    files: tuple[str, ...]
    rows_per_file: tuple[int, ...]
    columns: Mapping[str, str]
    """Every column of the union with its type family (``numeric``, ``string``, ...)."""
    label_column: str
    label_encoding: str
    """``"string"`` (neither/donor/acceptor), ``"integer"`` (0/1/2) or ``"none"`` (no label column:
    only possible when opened with ``require_labels=False``, as for prediction)."""
    gene_column: str
    metadata_columns: tuple[str, ...]
    feature_columns: tuple[str, ...]
    """Numeric non-metadata columns in file order, then k-mers sorted by (k, name)."""
    kmer_columns: tuple[str, ...]
    drift: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """k-mer column -> files that lack it (read as 0 there)."""

    @property
    def has_labels(self) -> bool:
        """True when the dataset carries its label column."""
        return self.label_encoding != "none"

    @property
    def n_rows(self) -> int:
        return int(sum(self.rows_per_file))

    @property
    def base_score_columns(self) -> tuple[str, ...]:
        return tuple(c for c in BASE_SCORE_COLUMNS if c in self.columns)

    def family_counts(self) -> dict[str, int]:
        """Number of feature columns per family (base scores, k-mers, other)."""
        base = set(BASE_SCORE_COLUMNS)
        kmers = {}
        for c in self.kmer_columns:
            k = c.split("mer_")[0] + "-mers"
            kmers[k] = kmers.get(k, 0) + 1
        other = sum(1 for c in self.feature_columns if c not in base and not is_kmer(c))
        return {
            "base_scores": sum(1 for c in self.feature_columns if c in base),
            **dict(sorted(kmers.items())),
            "other": other,
        }


def build_schema(
    file_schemas: Sequence[tuple[str, pa.Schema, int]],
    *,
    label_column: str = "splice_type",
    gene_column: str = "gene_id",
    extra_metadata: Sequence[str] = (),
    require_labels: bool = True,
) -> Schema:
    """Merge per-file arrow schemas into one :class:`Schema`, checking drift and types.

    With ``require_labels=False`` (prediction) a dataset without the label column is accepted
    (``label_encoding == "none"``); a label column that is present is still checked.
    """
    if not file_schemas:
        raise DatasetError("No parquet files found. Point --dataset at a directory, glob or URL of .parquet files.")
    metadata = set(METADATA_COLUMNS) | set(extra_metadata) | {label_column, gene_column}
    files = tuple(f for f, _, _ in file_schemas)
    families: dict[str, dict[str, list[str]]] = {}
    order: list[str] = []
    present: dict[str, set[str]] = {}
    for fname, schema, _ in file_schemas:
        for fld in schema:
            if fld.name not in families:
                families[fld.name] = {}
                order.append(fld.name)
            families[fld.name].setdefault(_type_family(fld.type), []).append(fname)
            present.setdefault(fld.name, set()).add(fname)

    conflicts = {c: fams for c, fams in families.items() if len({k for k in fams if k != "null"}) > 1}
    if conflicts:
        col, fams = next(iter(conflicts.items()))
        detail = "; ".join(f"{fam} in {preview(fs, 2)}" for fam, fs in fams.items())
        raise DatasetError(
            f"Column types conflict between files: {preview(conflicts)} (e.g. '{col}': {detail}). "
            "Rewrite the files so each column has one type."
        )

    drift: dict[str, tuple[str, ...]] = {}
    missing_other: dict[str, list[str]] = {}
    for col in order:
        lacking = [f for f in files if f not in present[col]]
        if not lacking:
            continue
        if is_kmer(col):
            drift[col] = tuple(lacking)
        else:
            missing_other[col] = lacking
    if missing_other:
        col, lacking = next(iter(missing_other.items()))
        raise DatasetError(
            f"Columns missing from some files: {preview(missing_other)} (e.g. '{col}' is absent from "
            f"{preview(lacking, 3)}). Only k-mer columns may differ between files; regenerate the "
            "files with the same columns."
        )

    fam = {c: next(k for k in families[c] if k != "null") if set(families[c]) - {"null"} else "null" for c in order}
    if gene_column not in fam:
        raise DatasetError(
            f"No gene column '{gene_column}' in {preview(files, 2)}. "
            "Name the gene column with --gene-column."
        )
    if label_column not in fam and not require_labels:
        encoding = "none"
    elif label_column not in fam:
        raise DatasetError(
            f"No label column '{label_column}' in {preview(files, 2)}. "
            "Name the label column with --label-column."
        )
    elif fam[label_column] == "string":
        encoding = "string"
    elif fam[label_column] == _NUMERIC:
        encoding = "integer"
    else:
        raise DatasetError(
            f"Label column '{label_column}' has type {fam[label_column]}; expected strings "
            "(neither/donor/acceptor) or integers (0/1/2)."
        )
    strings = [c for c in order if c not in metadata and fam[c] == "string"]
    if strings:
        raise DatasetError(
            f"Feature columns hold strings: {preview(strings)}. Features must be numeric: encode "
            "them, drop them, or declare them metadata with --metadata-columns."
        )
    odd = [c for c in order if c not in metadata and fam[c] not in (_NUMERIC, "null")]
    if odd:
        raise DatasetError(
            f"Feature columns have unsupported types: "
            f"{preview(f'{c} ({fam[c]})' for c in odd)}. Features must be numeric."
        )
    kmers = sorted((c for c in order if c not in metadata and is_kmer(c)), key=lambda c: (len(c), c))
    plain = [c for c in order if c not in metadata and not is_kmer(c)]
    return Schema(
        files=files,
        rows_per_file=tuple(int(n) for _, _, n in file_schemas),
        columns=fam,
        label_column=label_column,
        label_encoding=encoding,
        gene_column=gene_column,
        metadata_columns=tuple(c for c in order if c in metadata),
        feature_columns=tuple(plain + kmers),
        kmer_columns=tuple(kmers),
        drift=drift,
    )


def gene_keys(values: pd.Series) -> np.ndarray:
    """Gene ids as strings, the way the gene index and the parquet gene filter spell them."""
    if pd.api.types.is_object_dtype(values.dtype) or pd.api.types.is_string_dtype(values.dtype):
        return values.astype(str).to_numpy(dtype=object)
    return np.asarray(pa.array(values).cast(pa.string()).to_pylist(), dtype=object)


def encode_labels(values: pd.Series, label_column: str = "splice_type") -> np.ndarray:
    """Map labels (strings or 0/1/2) to int8 codes; unknown values are a :class:`DatasetError`."""
    if values.isna().any():
        raise DatasetError(
            f"Label column '{label_column}' has {int(values.isna().sum())} null values. "
            "Every row needs a label (neither, donor or acceptor)."
        )
    if pd.api.types.is_numeric_dtype(values.dtype):
        codes = values.to_numpy()
        bad = ~np.isin(codes, (0, 1, 2))
        if bad.any():
            counts = pd.Series(codes[bad]).value_counts()
            raise DatasetError(
                f"Label column '{label_column}' has values outside 0/1/2: "
                f"{preview(f'{v} ({n} rows)' for v, n in counts.items())}. "
                "Use 0 = neither, 1 = donor, 2 = acceptor."
            )
        return codes.astype(np.int8)
    strings = values.astype(str).str.strip().str.lower()
    codes = strings.map(LABEL_CODES)
    if codes.isna().any():
        counts = values[codes.isna()].value_counts()
        raise DatasetError(
            f"Label column '{label_column}' has unknown values: "
            f"{preview(f'{v!r} ({n} rows)' for v, n in counts.items())}. "
            "Use neither, donor or acceptor (or 0/1/2)."
        )
    return codes.to_numpy().astype(np.int8)
