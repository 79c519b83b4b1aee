"""The read path: a gene set's rows decoded into float32, one open per file vs the earlier two passes.

Every training, SHAP and evaluation task reads its rows with
:func:`metadask.dataset.rows.read_rows`. Until 2026-12 that read opened each file twice (the
gene column first, to place the rows, then the features); now it opens each file once and
places rows from the gene index's counts. This case times, in the same process and run,
alternating over ``--repeats`` rounds (medians):

* ``two_pass``: the earlier method, kept here verbatim as the baseline;
* ``one_pass``: today's ``read_rows`` (each file opened once);
* ``bare``: ``pyarrow.parquet.read_table`` of the same files and columns plus a float32 NumPy
  conversion, with no gene filter or ordering (a floor, not a like-for-like read).

Two gene sets of a wide synthetic dataset (3- and 5-mers, ~1,100 features): one file's genes
(a batch-ensemble or SHAP partition) and the genes of four folds out of five across every file
(a CV fit). CPU-seconds are this process's (the reads are single-threaded).

    python -m benchmarks read_path [--genes 200] [--kmers 3+5] [--genes-per-file 40] [--repeats 5] [--tiny]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.common import synthetic, table, write_result


def two_pass_read(ds: Any, genes: Sequence[str], features: Sequence[str], files: Sequence[str],
                  columns: Sequence[str]) -> tuple[np.ndarray, Any]:
    """The earlier ``Dataset.read_matrix``: pass 1 reads each file's gene column, pass 2 its features."""
    import pandas as pd

    genes = sorted(set(genes))
    gene_filter = ds._gene_filter(genes)
    keys = [ds.read_file(f, [ds.gene_column], genes=genes)[ds.gene_column].to_numpy(dtype=object) for f in files]
    sizes = [len(k) for k in keys]
    all_keys = np.concatenate(keys) if keys else np.empty(0, dtype=object)
    order = np.argsort(all_keys, kind="stable")
    dest = np.empty(len(order), dtype=np.int64)
    dest[order] = np.arange(len(order))
    x = np.empty((len(order), len(features)), dtype=np.float32)
    frames, start = [], 0
    meta_cols = list(dict.fromkeys([ds.gene_column, *columns]))
    for f, n in zip(files, sizes):
        if n == 0:
            continue
        rows = dest[start : start + n]
        start += n
        t = ds._read_table(f, [*features, *meta_cols], gene_filter)
        for j, c in enumerate(features):
            x[rows, j] = t.column(c).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        part = t.select(meta_cols).to_pandas()
        part.index = rows
        frames.append(part)
    meta = pd.concat(frames).sort_index().reset_index(drop=True)
    return x, meta


def bare_read(files: Sequence[str], columns: Sequence[str]) -> np.ndarray:
    import pyarrow.parquet as pq

    parts = []
    for f in files:
        have = set(pq.read_schema(f).names)  # k-mers a file lacks (drift) are zeros
        t = pq.read_table(f, columns=[c for c in columns if c in have])
        x = np.zeros((t.num_rows, len(columns)), dtype=np.float32)
        for j, c in enumerate(columns):
            if c in have:
                x[:, j] = t.column(c).to_numpy(zero_copy_only=False)
        parts.append(x)
    return np.concatenate(parts)


def _timed(fn: Any) -> tuple[float, float, Any]:
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - c0, time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genes", type=int, default=200)
    ap.add_argument("--kmers", default="3+5", help="k-mer sizes, e.g. 3 or 3+5")
    ap.add_argument("--genes-per-file", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="smoke run: 20 genes, 3-mers, 1 round")
    args = ap.parse_args(argv)
    if args.tiny:
        args.genes, args.kmers, args.genes_per_file, args.repeats = 20, "3", 5, 1
    import dask

    from metadask.dataset import build_gene_index, open_dataset
    from metadask.dataset.rows import ID_COLUMNS, gene_partitions, gene_set, read_rows
    from metadask.dataset.schema import BASE_SCORE_COLUMNS
    from metadask.plan import assign_folds

    kmers = tuple(int(k) for k in args.kmers.split("+"))
    ds = open_dataset(synthetic(args.genes, kmers, genes_per_file=args.genes_per_file))
    with dask.config.set(scheduler="sync"):
        index = build_gene_index(ds)
    features = list(ds.schema.feature_columns)
    columns = [c for c in (*ID_COLUMNS, ds.label_column, *BASE_SCORE_COLUMNS) if c in ds.schema.columns]
    folds = assign_folds(index, 5, seed=42)
    cases = {
        "one file (a partition)": gene_partitions(index, index.genes)[0][0],
        "4 of 5 folds (a CV fit)": gene_set(index, [g for g, f in folds.items() if f != 0]),
    }
    results: dict[str, Any] = {}
    for name, gs in cases.items():
        cpu: dict[str, list[float]] = {"two_pass": [], "one_pass": [], "bare": []}
        wall: dict[str, list[float]] = {k: [] for k in cpu}
        runs = {
            "two_pass": lambda gs=gs: two_pass_read(ds, gs.genes, features, gs.files, columns),
            "one_pass": lambda gs=gs: read_rows(ds, gs, features),
            "bare": lambda gs=gs: bare_read(gs.files, features),
        }
        same = None
        for r in range(args.repeats):
            for variant in (list(runs) if r % 2 == 0 else list(reversed(runs))):
                c, w, out = _timed(runs[variant])
                cpu[variant].append(c)
                wall[variant].append(w)
                if r == 0 and variant != "bare":
                    results.setdefault("_x", {})[variant] = out[0]
            if r == 0:
                same = bool(np.array_equal(results["_x"]["two_pass"], results["_x"]["one_pass"], equal_nan=True))
                results.pop("_x")
        med = {v: statistics.median(x) for v, x in cpu.items()}
        results[name] = {
            "genes": len(gs.genes), "files": len(gs.files), "rows": int(sum(gs.rows)),
            "median_cpu_seconds": med, "median_wall_seconds": {v: statistics.median(x) for v, x in wall.items()},
            "cpu_seconds": cpu, "one_pass_vs_two_pass": med["one_pass"] / med["two_pass"],
            "one_pass_vs_bare": med["one_pass"] / med["bare"], "identical_matrix": same,
        }
        print(table([
            (name, f"{len(gs.genes)} genes, {len(gs.files)} files, {int(sum(gs.rows)):,} rows x {len(features)} features"),
            ("two passes (earlier), median CPU", f"{med['two_pass']:.3f} s"),
            ("one pass (now), median CPU", f"{med['one_pass']:.3f} s  ({med['one_pass'] / med['two_pass']:.2f}x)"),
            ("bare pyarrow + float32 (floor)", f"{med['bare']:.3f} s  (one pass {med['one_pass'] / med['bare']:.2f}x)"),
            ("identical matrices", same),
        ]))
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    payload = {"genes": args.genes, "kmers": args.kmers, "features": len(features), "repeats": args.repeats,
               "cases": results, "load_average": os.getloadavg()}
    write_result("read_path" + ("_tiny" if args.tiny else ""), payload)
    return payload


if __name__ == "__main__":
    main()
