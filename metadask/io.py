"""Atomic artifact writes: every file goes to a temporary name, then is renamed into place.

The one mechanism for every file metadask writes (artifacts, journal entries, the gene index
cache, screening lists) and, with :func:`atomic_write_dir`, for directories (model bundles).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from metadask.errors import OutputError


def output_error(path: str | os.PathLike, exc: OSError) -> OutputError:
    """The :class:`OutputError` for an ``OSError`` met while writing ``path`` (disk full, permissions...)."""
    path = Path(path)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"No space left on the device while writing '{path}'. Free disk space or choose another --out-dir.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"Permission denied writing '{path}'. Choose a writable --out-dir.")
    return OutputError(f"Cannot write '{path}': {exc.strerror or exc}. Check --out-dir.")


def _temporary(path: Path, kind: str = "tmp") -> Path:
    # beside the target (same filesystem, so the rename is atomic), hidden, unique per process
    # and call (threads of one process may write the same target)
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _fsync(path: Path) -> None:
    # the data reaches the disk before the rename publishes it (a crash leaves the old file)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)``, flush it to disk, then rename the temporary file to ``path``.

    On any failure the temporary file is removed and ``path`` keeps its previous content; an
    ``OSError`` becomes one :class:`OutputError` that names ``path`` and the fix.
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(str(tmp))
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise output_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_dir(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_dir)`` on a new empty directory, then put it in place of ``path``.

    The directory variant of :func:`atomic_write`: an existing ``path`` is replaced only once
    the new directory is complete (it is moved aside, the new one renamed in, the old one
    removed); on failure the temporary directory is removed and ``path`` stays as it was.
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        writer(tmp)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise output_error(path, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = _temporary(path, "old")
    if path.exists():
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        if old.exists():
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise output_error(path, exc) from None
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    elif old.exists() or old.is_symlink():
        old.unlink()  # a file (or link) stood where the directory goes
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    def w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return atomic_write(path, w)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n")


def write_csv(path: str | os.PathLike, df: pd.DataFrame, **kw: Any) -> Path:
    return atomic_write(path, lambda tmp: df.to_csv(tmp, index=False, **kw))


def write_parquet(path: str | os.PathLike, df: pd.DataFrame) -> Path:
    return atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


def write_parquet_chunks(path: str | os.PathLike, chunks: Iterable[Any]) -> Path:
    """Write pyarrow tables of one schema as one parquet file (a row group per table), atomically.

    Only one table is held at a time: the way to write a frame too large to copy whole.
    """
    def writer(tmp: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        out = None
        try:
            for table in chunks:
                if out is None:
                    out = pq.ParquetWriter(tmp, table.schema)
                out.write_table(table)
        finally:
            if out is not None:
                out.close()
            pa.default_memory_pool().release_unused()  # the tables' buffers back to the system
        if out is None:
            raise ValueError("no rows to write")

    return atomic_write(path, writer)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)
