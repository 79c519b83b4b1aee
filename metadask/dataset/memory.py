"""Memory estimates from the gene index and the schema, without reading rows."""

from __future__ import annotations

from collections.abc import Iterable

from metadask.dataset.index import GeneIndex

FLOAT32 = 4


def matrix_bytes(index: GeneIndex, n_features: int, genes: Iterable[str] | None = None) -> int:
    """Bytes of the float32 training matrix (rows x features) of ``genes`` (all if ``None``)."""
    rows = index.n_rows if genes is None else index.rows(genes)
    return int(rows) * int(n_features) * FLOAT32


def format_bytes(n: float) -> str:
    """Human-readable size: ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
