"""Atomic artifact writes: every file goes to a temporary name, then is renamed into place."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
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


_fail = output_error


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` then rename the temporary file to ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(str(tmp))
        os.replace(tmp, path)
    except OSError as exc:
        if tmp.exists():
            tmp.unlink(missing_ok=True)
        raise _fail(path, exc) from None
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


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    def w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, w)


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
