"""Open a parquet dataset (directory, ``<name>/master``, glob or fsspec URL) lazily.

A :class:`Dataset` is small and picklable: it holds the file list, the filesystem and the
schema. Workers use it to read their own rows (:meth:`Dataset.read_genes`); the client
never needs the rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from metadask.dataset.schema import WEIGHT_COLUMN, Schema, build_schema, encode_labels, gene_keys  # noqa: F401  (gene_keys: re-exported)
from metadask.errors import DatasetError, preview


def _resolve_files(dataset: str | os.PathLike, storage_options: Mapping[str, Any] | None) -> tuple[Any, list[str], str]:
    url = os.fspath(dataset)
    try:
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise DatasetError(f"Cannot open dataset '{url}': {exc}. Check the URL and --storage-option values.") from exc
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]

    def qualify(p: str) -> str:
        return p if protocol in ("file", "local") else f"{protocol}://{p}"

    try:
        if any(ch in path for ch in "*?["):
            files = sorted(p for p in fs.glob(path) if p.endswith(".parquet"))
            if not files:
                raise DatasetError(f"No parquet files match '{url}'. Check the pattern.")
            return fs, [qualify(p) for p in files], url
        if not fs.exists(path):
            raise DatasetError(f"Dataset path '{url}' does not exist. Check the path (a directory, glob or URL).")
        if fs.isfile(path):
            if not path.endswith(".parquet"):
                raise DatasetError(f"'{url}' is not a .parquet file or a directory of them.")
            return fs, [qualify(path)], url
        master = path.rstrip("/") + "/master"
        if fs.isdir(master) and any(p.endswith(".parquet") for p in fs.find(master)):
            path = master
        files = sorted(p for p in fs.find(path) if p.endswith(".parquet") and "/." not in p[len(path):])
    except DatasetError:
        raise
    except (OSError, PermissionError) as exc:
        raise DatasetError(f"Cannot list dataset '{url}': {exc}. Check the path and its permissions.") from exc
    if not files:
        raise DatasetError(f"No parquet files in '{url}'. Point --dataset at a directory holding .parquet files.")
    return fs, [qualify(p) for p in files], url


def _strip(fs: Any, file: str) -> str:
    return fs._strip_protocol(file)


def _read_footer(fs: Any, file: str) -> tuple[str, pa.Schema, int]:
    try:
        with fs.open(_strip(fs, file), "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
            return file, meta.schema.to_arrow_schema(), meta.num_rows
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError, ValueError) as exc:
        size = fs.size(_strip(fs, file)) if fs.exists(_strip(fs, file)) else "?"
        raise DatasetError(
            f"'{file}' is not a readable parquet file ({size} bytes: {str(exc).splitlines()[0]}). "
            "Remove or regenerate it."
        ) from exc


def _footer_digest(fs: Any, file: str) -> str:
    """Digest of a parquet footer's row groups: rows, and per column chunk sizes and statistics."""
    import hashlib

    h = hashlib.sha256()
    try:
        with fs.open(_strip(fs, file), "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError, ValueError) as exc:
        raise DatasetError(f"'{file}' is not a readable parquet file ({str(exc).splitlines()[0]}). Remove or regenerate it.") from exc
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        h.update(f"rg{g}:{rg.num_rows};".encode())
        for c in range(rg.num_columns):
            col = rg.column(c)
            st = col.statistics
            stats = ""
            if st is not None:
                stats = f"{st.null_count}|" + (f"{st.min!r}|{st.max!r}" if st.has_min_max else "")
            h.update(f"{col.path_in_schema}:{col.total_compressed_size}:{col.total_uncompressed_size}:{stats};".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Dataset:
    """A lazily opened gene-grouped parquet dataset. Cheap to pickle and ship to workers."""

    url: str
    fs: Any = field(repr=False)
    schema: Schema
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    weight_column: str = WEIGHT_COLUMN
    """Per-row weight column (1 / inclusion probability of a sampled row), used when present."""

    @property
    def weighted(self) -> bool:
        """True when rows carry inclusion weights (:attr:`weight_column` is in the schema)."""
        return self.weight_column in self.schema.columns

    @property
    def files(self) -> tuple[str, ...]:
        return self.schema.files

    @property
    def gene_column(self) -> str:
        return self.schema.gene_column

    @property
    def label_column(self) -> str:
        return self.schema.label_column

    def fingerprint(self) -> list[list[Any]]:
        """``[file, size, modification marker, footer statistics digest]`` per file.

        The marker is the modification time and, on object stores, the ETag (a content hash
        for single-part uploads). The footer digest covers each row group's row count and,
        per column chunk, its compressed and uncompressed sizes and min / max / null-count
        statistics, so values rewritten in place change the fingerprint even when the size
        and the modification time were kept (``cp -p``, ``touch -r``). One footer read per
        file (a few ranged reads on object stores, a few threads at once).
        """
        from concurrent.futures import ThreadPoolExecutor

        def one(f: str) -> list[Any]:
            info = self.fs.info(_strip(self.fs, f))
            mtime = info.get("mtime") or info.get("LastModified") or info.get("created")
            etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
            marker = f"{mtime}" + (f" etag {etag}" if etag else "")
            return [f, int(info.get("size") or 0), marker, _footer_digest(self.fs, f)]

        with ThreadPoolExecutor(max_workers=min(8, max(1, len(self.files)))) as pool:
            return list(pool.map(one, self.files))

    # -- reading -----------------------------------------------------------------------
    def _gene_filter(self, genes: Iterable[str]) -> pc.Expression:
        """Parquet filter selecting ``genes`` (gene ids as the index holds them: strings).

        A numeric gene column is compared through its string form (the index keys numeric ids
        the same way, see :func:`gene_keys`), since arrow cannot compare strings with numbers.
        """
        field = pc.field(self.gene_column)
        if self.schema.columns.get(self.gene_column) != "string":
            field = field.cast(pa.string())
        return field.isin(pa.array(sorted({str(g) for g in genes}), pa.string()))

    def read_file(
        self,
        file: str,
        columns: Sequence[str] | None = None,
        genes: Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """Read one file's rows (optionally only ``genes``), harmonised to the union schema.

        k-mer columns the file lacks are filled with 0. Only the requested columns are read.
        """
        wanted = list(self.schema.columns) if columns is None else list(columns)
        unknown = [c for c in wanted if c not in self.schema.columns]
        if unknown:
            raise DatasetError(f"Columns not in the dataset: {preview(unknown)}.")
        filters = None if genes is None else self._gene_filter(genes)
        read = wanted if genes is None else list(dict.fromkeys([*wanted, self.gene_column]))
        df = self._read_table(file, read, filters).to_pandas()
        return df[wanted]

    def _read_table(self, file: str, columns: Sequence[str], filters: pc.Expression | None = None, *,
                    absent_as_zero: bool = False) -> pa.Table:
        """``columns`` of one file (the rows passing ``filters``) as an arrow table, in that order.

        The one place the union schema is applied to a file (every read goes through it, and
        opens the file once): k-mer columns the file lacks (schema drift) come back as zeros
        (one shared float64 zero column); with ``absent_as_zero`` so do columns the dataset
        never has (a model's k-mers on data without them; callers check which may be absent).
        A file that cannot be decoded is a :class:`DatasetError`.
        """
        names = list(dict.fromkeys(columns))
        lacking = {c for c in names if file in self.schema.drift.get(c, ())}
        if absent_as_zero:
            lacking |= {c for c in names if c not in self.schema.columns}
        try:
            with self.fs.open(_strip(self.fs, file), "rb") as fh:
                table = pq.read_table(fh, columns=[c for c in names if c not in lacking], filters=filters)
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
            raise DatasetError(
                f"Cannot read '{file}': {str(exc).splitlines()[0]}. The file may be truncated or corrupt; "
                "regenerate it."
            ) from exc
        if not lacking:
            return table.select(names)
        zeros = pa.array(np.zeros(table.num_rows))
        return pa.table({c: zeros if c in lacking else table.column(c) for c in names})

    def read_genes(
        self,
        genes: Iterable[str],
        columns: Sequence[str] | None = None,
        files: Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """Read the rows of ``genes`` (from ``files`` if known, else from every file).

        Rows come back in a canonical order: by gene id, then by their order in the files,
        so the same genes give the same matrix on any worker.
        """
        genes = sorted(set(genes))
        cols = None if columns is None else list(dict.fromkeys([self.gene_column, *columns]))
        parts = [self.read_file(f, cols, genes=genes) for f in (self.files if files is None else files)]
        parts = [p for p in parts if len(p)]
        if not parts:
            return self.read_file(self.files[0], cols, genes=[])
        df = pd.concat(parts, ignore_index=True)
        order = np.argsort(df[self.gene_column].to_numpy(dtype=object), kind="stable")
        df = df.iloc[order].reset_index(drop=True)
        return df if columns is None or self.gene_column in columns else df[list(columns)]

    def read_file_matrix(
        self, file: str, features: Sequence[str], columns: Sequence[str] = ()
    ) -> tuple[np.ndarray, pa.Table]:
        """One whole file, in file order: a float32 matrix of ``features`` and an arrow table of ``columns``.

        The partition reader of prediction (one file = one partition, as in :meth:`to_dask`),
        without a pandas frame of the features: each column is decoded straight into the
        C-ordered float32 matrix XGBoost reads. Features the file lacks (k-mers of the drift,
        or k-mers the dataset never has) read as 0; nulls as NaN; infinite values are an error.
        """
        unknown = [c for c in columns if c not in self.schema.columns]
        if unknown:
            raise DatasetError(f"Columns not in the dataset: {preview(unknown)}.")
        table = self._read_table(file, [*features, *columns], absent_as_zero=True)
        x = np.empty((table.num_rows, len(features)), dtype=np.float32)
        _decode_into(x, slice(None), table, features)
        _check_finite(x, features, f" of '{file}'")
        return x, table.select(list(columns))

    def read_matrix(
        self,
        genes: Iterable[str],
        features: Sequence[str],
        *,
        files: Iterable[str] | None = None,
        columns: Sequence[str] = (),
        gene_rows: Sequence[int] | None = None,
        absent_as_zero: bool = False,
    ) -> tuple[np.ndarray, pd.DataFrame]:
        """Read ``genes`` as a float32 matrix of ``features`` plus a frame of ``columns``.

        Rows come in the canonical order of :meth:`read_genes` (by gene id, then file order),
        decoded a block of columns at a time straight into a preallocated array, so memory
        stays close to the float32 matrix plus one file's table. Each file is opened once when
        the genes sit in one file or ``gene_rows`` (rows per gene, aligned with the sorted
        genes: the gene index's counts, see :func:`metadask.dataset.rows.gene_set`) is given;
        otherwise a first pass reads the files' gene column to count the rows. A file holding
        other counts than ``gene_rows`` says the dataset changed after indexing
        (:class:`DatasetError`). Infinite values are an error; with ``absent_as_zero`` features
        the dataset lacks read as 0.
        """
        ordered = sorted({str(g) for g in genes})
        keys_sorted = np.asarray(ordered, dtype=object)
        files = list(self.files if files is None else files)
        gene_filter = self._gene_filter(ordered)
        meta_cols = list(dict.fromkeys([self.gene_column, *columns]))

        def table_of(f: str) -> pa.Table:
            return self._read_table(f, [*features, *meta_cols], gene_filter, absent_as_zero=absent_as_zero)

        def codes_of(table: pa.Table) -> np.ndarray:
            keys = gene_keys(table.column(self.gene_column).to_pandas())
            return np.searchsorted(keys_sorted, keys).astype(np.int64)

        if gene_rows is not None:
            counts = np.asarray(gene_rows, dtype=np.int64)
            if len(counts) != len(ordered):
                raise ValueError(f"gene_rows has {len(counts)} counts for {len(ordered)} genes")
        elif len(files) <= 1:
            counts = None  # taken from the one file's own gene column
        else:  # no counts for genes across files: a first pass over the gene column (memory stays bounded)
            counts = np.zeros(len(ordered), dtype=np.int64)
            for f in files:
                counts += np.bincount(codes_of(self._read_table(f, [self.gene_column], gene_filter)), minlength=len(ordered))
        x: np.ndarray | None = None
        seen = np.zeros(len(ordered), dtype=np.int64)
        frames = []
        for f in files:
            table = table_of(f)
            codes = codes_of(table)
            if counts is None:
                counts = np.bincount(codes, minlength=len(ordered))
            if x is None:
                x = np.empty((int(counts.sum()), len(features)), dtype=np.float32)
                starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            order = np.argsort(codes, kind="stable")
            grouped = codes[order]
            rank = np.empty(len(codes), dtype=np.int64)  # a row's place among its gene's rows in this file
            rank[order] = np.arange(len(codes)) - np.searchsorted(grouped, grouped, side="left")
            rows = starts[codes] + seen[codes] + rank
            seen += np.bincount(codes, minlength=len(ordered))
            if (seen > counts).any():
                break
            _decode_into(x, rows, table, features)
            part = table.select(meta_cols).to_pandas()
            part.index = rows
            frames.append(part)
            del table
        if x is None:
            x = np.empty((0, len(features)), dtype=np.float32)
        elif not np.array_equal(seen, counts):
            bad = [g for g, a, b in zip(ordered, seen, counts) if a != b]
            raise DatasetError(
                f"The files of genes {preview(bad)} hold other rows than the gene index lists. The dataset "
                "changed after indexing; rerun without --resume (or delete the run's cache/) to rebuild the index."
            )
        meta = pd.concat(frames).sort_index() if frames else self.read_file(self.files[0], meta_cols, genes=[])
        meta = meta.reset_index(drop=True)
        _check_finite(x, features, "", "Replace them, or exclude the columns with --exclude-features.")
        return x, meta

    def to_dask(self, columns: Sequence[str] | None = None):  # -> dask.dataframe.DataFrame
        """The dataset as a lazy Dask dataframe, one partition per file, k-mers harmonised."""
        import dask.dataframe as dd

        cols = list(self.schema.columns) if columns is None else list(columns)
        meta = self.read_file(self.files[0], cols, genes=[])
        return dd.from_map(_ReadFile(self, cols), list(self.files), meta=meta, enforce_metadata=False)


class _ReadFile:
    """Picklable partition reader for :meth:`Dataset.to_dask`."""

    def __init__(self, dataset: Dataset, columns: list[str]):
        self.dataset, self.columns = dataset, columns

    def __call__(self, file: str) -> pd.DataFrame:
        return self.dataset.read_file(file, self.columns)


def open_dataset(
    dataset: str | os.PathLike | Dataset,
    *,
    storage_options: Mapping[str, Any] | None = None,
    label_column: str = "splice_type",
    gene_column: str = "gene_id",
    metadata_columns: Sequence[str] = (),
    weight_column: str | None = None,
    require_labels: bool = True,
) -> Dataset:
    """Open a dataset lazily: resolve its files and read the schema from footers.

    Parameters
    ----------
    dataset
        A directory (``<name>`` or ``<name>/master``), a glob, a single file or an fsspec URL
        (``s3://bucket/prefix``, ``file://...``).
    storage_options
        Passed to fsspec (for example ``{"endpoint_url": ..., "anon": True}``).
    label_column, gene_column
        Names of the label and gene columns.
    metadata_columns
        Extra columns never to use as features.
    weight_column
        Per-row inclusion weights (metadata, never a feature); must exist when given. Default:
        ``sample_weight`` when the dataset has it.
    require_labels
        Training and evaluation need the label column (its absence is an error); prediction
        passes ``False`` to open unlabelled data (``schema.has_labels`` then says which it is).
    """
    if isinstance(dataset, Dataset):
        return dataset
    fs, files, url = _resolve_files(dataset, storage_options)
    # files of one dataset mostly share one schema: keep one arrow schema object per distinct
    # schema, so the client's memory for the footers does not grow with the number of files
    # (a 169-column schema per file held ~50 KB each: 150 MB for 3,000 files)
    distinct: dict[pa.Schema, pa.Schema] = {}
    footers = []
    for f in files:
        name, schema, rows = _read_footer(fs, f)
        footers.append((name, distinct.setdefault(schema, schema), rows))
    from metadask.dataset.validate import check_column_names

    check_column_names(footers)  # blank or repeated column names
    extra = (*metadata_columns, weight_column) if weight_column else tuple(metadata_columns)
    schema = build_schema(footers, label_column=label_column, gene_column=gene_column, extra_metadata=extra,
                          require_labels=require_labels)
    if weight_column and weight_column not in schema.columns:
        raise DatasetError(f"No weight column '{weight_column}' in {url}. Name an existing column with --weight-column "
                           "(or leave it out: 'sample_weight' is used when present).")
    return Dataset(url=url, fs=fs, schema=schema, storage_options=dict(storage_options or {}),
                   weight_column=weight_column or WEIGHT_COLUMN)


DECODE_BLOCK_VALUES = 4 << 20
"""Values (float32) of the column block :func:`_decode_into` assembles before writing it into the matrix (16 MiB)."""


def _decode_into(x: np.ndarray, rows: Any, table: pa.Table, features: Sequence[str]) -> None:
    """Decode ``features`` of ``table`` into ``x[rows]`` (float32; nulls NaN), a block of columns at a time.

    A column written straight into a C-ordered matrix is a strided write per value; a block of
    up to 64 columns is first decoded into a small feature-major buffer (contiguous writes),
    then written row-wise, 64 values per row at once. Rows that are one consecutive run are
    written through a slice (no fancy indexing).
    """
    n = table.num_rows
    if isinstance(rows, np.ndarray) and n and int(rows[-1]) - int(rows[0]) == n - 1 and bool((np.diff(rows) == 1).all()):
        rows = slice(int(rows[0]), int(rows[0]) + n)
    step = max(1, min(64, DECODE_BLOCK_VALUES // max(n, 1)))
    buf = np.empty((min(step, len(features)), n), dtype=np.float32)
    for j0 in range(0, len(features), step):
        block = buf[: len(features[j0 : j0 + step])]
        for k, c in enumerate(features[j0 : j0 + step]):
            col = table.column(c)
            block[k] = np.nan if pa.types.is_null(col.type) else col.to_numpy(zero_copy_only=False)
        x[rows, j0 : j0 + len(block)] = block.T


def _check_finite(x: np.ndarray, features: Sequence[str], where: str = "",
                  fix: str = "Replace them.") -> None:
    if np.isinf(x).any():
        bad = [c for j, c in enumerate(features) if np.isinf(x[:, j]).any()]
        raise DatasetError(f"Feature columns{where} hold infinite (or float32-overflowing) values: {preview(bad)}. {fix}")


def feature_matrix(df: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
    """Build the float32, C-ordered training matrix once (NaN = missing; inf is an error)."""
    x = np.ascontiguousarray(df[list(features)].to_numpy(dtype=np.float32, na_value=np.nan))
    if np.isinf(x).any():
        bad = [c for c, col in zip(features, x.T) if np.isinf(col).any()]
        raise DatasetError(
            f"Feature columns hold infinite values: {preview(bad)}. Replace them (or exclude the "
            "columns with --exclude-features)."
        )
    return x


def label_vector(df: pd.DataFrame, label_column: str) -> np.ndarray:
    """Label codes (0 neither, 1 donor, 2 acceptor) for the rows of ``df``."""
    return encode_labels(df[label_column], label_column)
