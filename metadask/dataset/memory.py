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


def process_peak_rss() -> int:
    """Peak resident memory of this process in bytes (0 where the platform cannot tell).

    Linux's ``VmHWM`` is used where present: ``getrusage().ru_maxrss`` survives ``exec`` and so
    reports the *parent's* peak for a freshly spawned Dask worker (a worker started from a
    700 MiB pytest or notebook process would report 700 MiB before doing anything).
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
        import sys

        scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale
    except (ImportError, OSError):
        return 0


def trim_memory() -> None:
    """Hand the C heap's free pages back to the operating system (glibc ``malloc_trim``; elsewhere nothing).

    NumPy arrays of up to 32 MiB come from the C heap once glibc has raised its mmap threshold,
    and freeing them leaves the pages mapped: the client's resident memory would ratchet up
    with every large step (the out-of-fold assembly, calibration, one fold's metrics) although
    the arrays are gone. Dask's workers do the same (``MALLOC_TRIM_THRESHOLD_``, see
    https://distributed.dask.org/en/stable/worker-memory.html).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl): nothing to trim
        pass
