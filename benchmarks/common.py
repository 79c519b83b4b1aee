"""Helpers shared by the benchmarks: results JSON, peak-memory sampling, dataset cache."""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import psutil

RESULTS = Path(os.environ.get("METADASK_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
"""Where results JSON goes: ``benchmarks/results`` (committed: the docs quote these files), or
``METADASK_BENCH_RESULTS`` (the test suite points it at a temporary folder)."""
CACHE = Path(os.environ.get("METADASK_BENCH_CACHE", "/tmp/metadask-bench"))


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return path


def synthetic(n_genes: int, kmers: tuple[int, ...] = (3,), seed: int = 42, genes_per_file: int = 100) -> Path:
    """A cached synthetic dataset (generated once per size)."""
    from metadask.testing import make_dataset

    name = f"syn_{n_genes}_{'_'.join(map(str, kmers))}_{seed}_{genes_per_file}"
    out = CACHE / name
    if not (out / "master" / "gene_manifest.csv").exists():
        make_dataset(out, n_genes, seed=seed, kmer_sizes=kmers, genes_per_file=genes_per_file, overwrite=True)
    return out


class PeakRSS:
    """Sample the RSS of this process (and its children) in a thread; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.05, children: bool = False):
        self.interval, self.children, self.peak = interval, children, 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        p = psutil.Process()
        total = p.memory_info().rss
        if self.children:
            for c in p.children(recursive=True):
                try:
                    total += c.memory_info().rss
                except psutil.Error:
                    pass
        return total

    def __enter__(self) -> PeakRSS:
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())


def table(rows: list[tuple[str, Any]]) -> str:
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)
