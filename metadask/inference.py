"""Inference with any trained bundle: ``load_model``, ``predict_frame`` and ``predict_dataset``.

``predict_dataset`` scores a parquet dataset (labelled or not: every gene-body position of a
genome is the usual input) out of core: each task reads one file (a partition of the dataset's
Dask dataframe, k-mer sets harmonised), scores it and writes it as its own parquet part into a
temporary directory next to ``out``; the client only collects one row count per part and keeps
a bounded window of tasks in flight, so neither its memory nor the scheduler's grows with the
number of rows or files. The directory is renamed to ``out`` when every part is written, so a
failed run leaves nothing half-written.

Output columns (one row per input row, in file order; part ``i`` holds file ``i``'s rows):

* pass-through ids, where present: the gene column, ``position``, ``transcript_id``, ``chrom``,
  ``strand``, ``absolute_position``, the label column, any ``metadata_columns`` and the base
  scores (``neither_score``, ``donor_score``, ``acceptor_score``);
* ``prob_neither``, ``prob_donor``, ``prob_acceptor`` (float32): the calibrated probabilities,
  summing to 1 per row (as :meth:`MetaModel.predict_proba`);
* ``splice_score`` (float32): ``prob_donor + prob_acceptor``;
* ``call`` (categorical ``neither``/``donor``/``acceptor``): the decision at the model's
  splice threshold (stored in the bundle; ``threshold`` overrides it), see
  :mod:`metadask.models.thresholds`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metadask.cluster import CONNECT_OPTIONS, connect
from metadask.cluster.watch import watched
from metadask.dataset.schema import BASE_SCORE_COLUMNS, LABELS, is_kmer
from metadask.dataset.source import Dataset, open_dataset
from metadask.errors import ConfigError, ModelError, OutputError, preview
from metadask.io import atomic_write_dir
from metadask.models.base import MetaModel
from metadask.models.bundle import load_model
from metadask.models.thresholds import call_codes, check_thresholds, splice_score

log = logging.getLogger("metadask")

__all__ = ["ID_COLUMNS", "PREDICTION_COLUMNS", "load_model", "predict_dataset", "predict_frame"]

ID_COLUMNS: tuple[str, ...] = ("position", "transcript_id", "chrom", "strand", "absolute_position")
"""Identifier columns passed through to predictions when present (after the gene column)."""

PREDICTION_COLUMNS: tuple[str, ...] = (*(f"prob_{c}" for c in LABELS), "splice_score", "call")
"""The columns a prediction adds to the pass-through ids."""

SUMMARY_FILE = "_predict.json"
"""Written next to the parts; parquet readers skip names starting with ``_``."""


def resolve_threshold(model: MetaModel, threshold: float | None = None) -> tuple[float, str]:
    """The splice threshold to call with and where it comes from (``threshold`` beats the bundle's)."""
    if threshold is None:
        t = check_thresholds(model.thresholds)
        return t["splice"], str(t.get("source", "model bundle"))
    return check_thresholds({"splice": threshold})["splice"], "--threshold (overrides the model's)"


def passthrough_columns(columns: Sequence[str], gene_column: str = "gene_id", label_column: str = "splice_type",
                        metadata_columns: Sequence[str] = ()) -> list[str]:
    """The id / label / metadata / base-score columns of ``columns`` that predictions carry along."""
    wanted = (gene_column, *ID_COLUMNS, label_column, *metadata_columns, *BASE_SCORE_COLUMNS)
    have = set(columns)
    return [c for c in dict.fromkeys(wanted) if c in have]


def predict_frame(
    model: MetaModel,
    df: pd.DataFrame,
    *,
    gene_column: str = "gene_id",
    label_column: str = "splice_type",
    metadata_columns: Sequence[str] = (),
    threshold: float | None = None,
) -> pd.DataFrame:
    """Pass-through ids plus ``prob_*``, ``splice_score`` and ``call`` for a pandas frame.

    See the module docstring for the columns. ``threshold`` overrides the model's stored splice
    threshold (a number in (0, 1]).
    """
    t, _ = resolve_threshold(model, threshold)
    p = model.predict_proba(df) if len(df) else np.empty((0, len(LABELS)), dtype=np.float64)
    ids = passthrough_columns(df.columns, gene_column, label_column, metadata_columns)
    out = df[ids].reset_index(drop=True) if ids else pd.DataFrame(index=pd.RangeIndex(len(df)))
    for name, values in _scores(p, t).items():
        out[name] = values if name != "call" else pd.Categorical.from_codes(values, categories=list(LABELS))
    return out


def _scores(p: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """The prediction columns for probabilities ``p``: float32 ``prob_*`` and ``splice_score``, ``call`` codes."""
    out = {f"prob_{name}": p[:, k].astype(np.float32) for k, name in enumerate(LABELS)}
    out["splice_score"] = splice_score(p).astype(np.float32)
    out["call"] = call_codes(p, threshold)
    return out


def _worker_threads(default: int = 1) -> int:
    """Threads of the worker running this task (XGBoost's nthread follows them)."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return default


def _score_file(ds: Dataset, file: str, model: MetaModel, path: str, ids: list[str], threshold: float) -> int:
    """Worker task: read one file (one partition), score it, write it as one parquet part; its rows.

    Arrow from end to end: the features are decoded straight into the float32 matrix
    (:meth:`Dataset.read_file_matrix`) and the ids go back to parquet without a pandas round trip,
    so the fixed costs next to the trees' work are parquet's decoding and encoding.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    model.nthread = _worker_threads()  # this worker's threads, not every core of the machine
    x, table = ds.read_file_matrix(file, model.features, ids)
    p = model.calibrate(model.raw_proba(x), x) if len(x) else np.empty((0, len(LABELS)), dtype=np.float64)
    calls = pa.array(list(LABELS), pa.string())
    for name, values in _scores(p, threshold).items():
        column = pa.DictionaryArray.from_arrays(pa.array(values, pa.int8()), calls) if name == "call" else pa.array(values)
        table = table.append_column(name, column)
    pq.write_table(table, path)
    return table.num_rows


def _check_out(out: Path, overwrite: bool, inputs: Sequence[str]) -> None:
    if out.exists() and not overwrite:
        raise OutputError(f"'{out}' exists. Pass --overwrite to replace it or choose another --out.")
    target = os.path.realpath(out)
    inside = target.rstrip(os.sep) + os.sep
    for p in inputs:
        p = os.path.realpath(p)
        if p == target or p.startswith(inside):
            raise OutputError(f"--out '{out}' would replace the input '{p}'. Choose another --out.")


def _local_inputs(ds: Dataset, model: Any) -> list[str]:
    """Local paths of the inputs (the dataset's files, the model), which ``--out`` must never replace."""
    paths = [f for f in ds.files if "://" not in f]
    if not isinstance(model, MetaModel):
        paths.append(os.fspath(model))
    return paths


def predict_dataset(
    model: str | os.PathLike | MetaModel,
    dataset: str | os.PathLike | Dataset,
    out: str | os.PathLike,
    *,
    gene_column: str = "gene_id",
    label_column: str = "splice_type",
    metadata_columns: Sequence[str] = (),
    threshold: float | None = None,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    client: Any = None,
    **cluster_options: Any,
) -> int:
    """Score every row of ``dataset`` on the cluster; write a directory of parquet parts.

    Parameters
    ----------
    model
        A model bundle directory (``<run>/model``) or a loaded :class:`MetaModel`.
    dataset
        Parquet directory, glob or fsspec URL; the label column is optional.
    out
        Output directory: ``part.00000.parquet`` ... (one per input file) and ``_predict.json``
        (model, dataset, threshold, rows). Written by the workers into a temporary sibling
        directory, renamed to ``out`` at the end: the workers must see ``out``'s filesystem.
    gene_column, label_column, metadata_columns
        As for training; the label column may be absent. Metadata columns (never features) are
        passed through to the output.
    threshold
        Splice threshold for the ``call`` column; default: the one stored in the model bundle.
    overwrite
        Replace an existing ``out`` (only once the new predictions are complete).
    storage_options, client, cluster_options
        fsspec options for the dataset; a Dask client to use, or the options of
        :func:`metadask.cluster.connect` (``scheduler``, ``n_workers``, ...).

    Returns
    -------
    int
        The number of rows written (summed from the workers' per-part counts).
    """
    unknown = sorted(set(cluster_options) - set(CONNECT_OPTIONS))
    if unknown:
        raise ConfigError(f"Unknown option '{unknown[0]}' for predict. Known: {', '.join(CONNECT_OPTIONS)}.")
    out = Path(out)
    if out.exists() and not overwrite:  # before loading anything
        raise OutputError(f"'{out}' exists. Pass --overwrite to replace it or choose another --out.")
    m = model if isinstance(model, MetaModel) else load_model(model, verbose=True)
    t, source = resolve_threshold(m, threshold)
    ds = open_dataset(dataset, storage_options=storage_options, label_column=label_column, gene_column=gene_column,
                      metadata_columns=metadata_columns, require_labels=False)
    _check_out(out, overwrite, _local_inputs(ds, model))
    lacking = [f for f in m.features if f not in ds.schema.columns and not is_kmer(f)]
    if lacking:
        raise ModelError(
            f"Dataset lacks {len(lacking)} feature columns the model was trained on: {preview(lacking)}. "
            "Predict on data with the training dataset's columns."
        )
    ids = passthrough_columns(ds.schema.columns, ds.gene_column, ds.label_column, metadata_columns)
    n_parts = len(ds.files)
    log.info("Scoring %s rows in %d files of %s with %s; calls at splice threshold %g (%s)",
             f"{ds.schema.n_rows:,}", n_parts, ds.url, m.describe(), t, source)
    rows = 0

    def write(tmp: Path) -> None:  # into a temporary sibling directory, renamed to ``out`` when complete
        nonlocal rows
        rows = _run(m, ds, ids, t, tmp, client, cluster_options)
        parts = sum(1 for _ in tmp.glob("part.*.parquet"))
        if parts != n_parts:
            raise ConfigError(
                f"Only {parts} of {n_parts} prediction parts reached '{tmp}': the workers write where they run. "
                "Choose an --out on a filesystem the workers and this machine share."
            )
        summary = {"model": str(model) if not isinstance(model, MetaModel) else m.describe(), "dataset": ds.url,
                   "rows": rows, "parts": n_parts, "threshold": {"splice": t, "source": source},
                   "columns": [*ids, *PREDICTION_COLUMNS], "call_rule": "call = neither unless prob_donor + "
                   "prob_acceptor >= threshold; then donor or acceptor, whichever is larger"}
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")

    atomic_write_dir(out, write)  # a failed run removes the temporary directory; ``out`` stays as it was
    log.info("Wrote %s predictions to %s (%d parts)", f"{rows:,}", out, n_parts)
    return rows


def _run(model: MetaModel, ds: Dataset, ids: list[str], threshold: float, tmp: Path,
         client: Any, cluster_options: dict[str, Any]) -> int:
    """One read-score-write task per file, a bounded window of them in flight; a line per finished one.

    Each task reads one file, a partition of :meth:`Dataset.to_dask`. They are submitted
    a window at a time (twice the cluster's threads) rather than as one graph of every file, so
    the scheduler's and the client's memory stay the same whatever the number of files (and
    of rows): a graph of every file held ~65 KB of scheduler state per file until the end.
    """

    with connect(client=client, **cluster_options) as c:
        # the model and the dataset (which holds the file list) go to each worker once
        remote_model, remote_ds = c.scatter([model, ds], broadcast=True, hash=False)
        window = max(4, 2 * sum(c.nthreads().values()))
        todo = iter(enumerate(ds.files))
        live: set[Any] = set()

        def submit() -> Any:
            nxt = next(todo, None)
            if nxt is None:
                return None
            i, file = nxt
            fut = c.submit(_score_file, remote_ds, file, remote_model, str(tmp / f"part.{i:05d}.parquet"), ids, threshold,
                           pure=False, key=f"metadask-predict-part-{i:05d}-{os.getpid()}-{time.monotonic_ns()}")
            live.add(fut)
            return fut

        n_parts, total, t0 = len(ds.files), 0, time.perf_counter()
        done = watched(c, [f for f in (submit() for _ in range(window)) if f is not None], "the prediction tasks")
        try:
            for n, fut in enumerate(done, 1):
                rows = int(fut.result())
                live.discard(fut)
                total += rows
                log.info("[%d/%d] scored %s rows (elapsed %.0f s)", n, n_parts, f"{rows:,}", time.perf_counter() - t0)
                nxt = submit()
                if nxt is not None:
                    done.add(nxt)
        finally:
            c.cancel([*live, remote_model, remote_ds])
    return total
