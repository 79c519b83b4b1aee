"""Inference with any trained bundle: ``load_model`` and ``predict_dataset`` on a cluster."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from metadask.cluster import CONNECT_OPTIONS, connect
from metadask.dataset.schema import BASE_SCORE_COLUMNS, LABELS
from metadask.dataset.source import open_dataset
from metadask.errors import ConfigError, OutputError
from metadask.io import atomic_write
from metadask.models.base import MetaModel
from metadask.models.bundle import load_model

log = logging.getLogger("metadask")

__all__ = ["load_model", "predict_dataset", "predict_frame"]


def predict_frame(model: MetaModel, df: pd.DataFrame, gene_column: str = "gene_id") -> pd.DataFrame:
    """Ids, the three probabilities and the predicted class for a pandas frame."""
    p = model.predict_proba(df)
    out = pd.DataFrame(index=df.index)
    for c in (gene_column, *_ID_COLUMNS):
        if c in df:
            out[c] = df[c].to_numpy()
    for k, name in enumerate(LABELS):
        out[f"prob_{name}"] = p[:, k]
    out["predicted_class"] = p.argmax(axis=1).astype("int64")
    out["predicted_label"] = pd.Categorical.from_codes(out["predicted_class"], categories=list(LABELS)).astype(str)
    return out


_ID_COLUMNS = ("position", "transcript_id", "chrom", "strand", "absolute_position")


def _empty_prediction_frame(like: pd.DataFrame, gene_column: str) -> pd.DataFrame:
    cols = {c: like[c] for c in (gene_column, *_ID_COLUMNS) if c in like}
    out = pd.DataFrame(cols)
    for name in LABELS:
        out[f"prob_{name}"] = pd.Series(dtype="float64")
    out["predicted_class"] = pd.Series(dtype="int64")
    out["predicted_label"] = pd.Series(dtype=str)
    return out


def _score_partition(df: pd.DataFrame, model: MetaModel, gene_column: str) -> pd.DataFrame:
    return predict_frame(model, df, gene_column)


def predict_dataset(
    model: str | os.PathLike | MetaModel,
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    client: Any = None,
    **cluster_options: Any,
) -> int:
    """Score every row of ``dataset`` on the cluster; write one parquet file. Returns rows written.

    ``cluster_options`` are those of :func:`metadask.cluster.connect` (``scheduler``,
    ``n_workers``, ...).
    """
    unknown = sorted(set(cluster_options) - set(CONNECT_OPTIONS))
    if unknown:
        raise ConfigError(f"Unknown option '{unknown[0]}' for predict. Known: {', '.join(CONNECT_OPTIONS)}.")
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputError(f"'{out}' exists. Pass --overwrite to replace it or choose another --out.")
    m = model if isinstance(model, MetaModel) else load_model(model, verbose=True)
    ds = open_dataset(dataset, storage_options=storage_options)
    from metadask.dataset.schema import is_kmer
    from metadask.errors import ModelError, preview

    lacking = [f for f in m.features if f not in ds.schema.columns and not is_kmer(f)]
    if lacking:
        raise ModelError(
            f"Dataset lacks {len(lacking)} feature columns the model was trained on: {preview(lacking)}. "
            "Predict on data with the training dataset's columns."
        )
    wanted = [c for c in (ds.gene_column, "position", "transcript_id", "chrom", "strand", "absolute_position")
              if c in ds.schema.columns]
    present = [f for f in m.features if f in ds.schema.columns]
    columns = list(dict.fromkeys(wanted + present + [c for c in BASE_SCORE_COLUMNS if c in ds.schema.columns]))
    with connect(client=client, **cluster_options) as c, c.as_current():
        ddf = ds.to_dask(columns)
        meta = _empty_prediction_frame(ddf._meta, ds.gene_column)
        scored = ddf.map_partitions(_score_partition, m, ds.gene_column, meta=meta)
        result = scored.compute()
    atomic_write(out, lambda tmp: result.to_parquet(tmp, index=False))
    log.info("Scored %s rows of %s with %s", f"{len(result):,}", ds.url, m.describe())
    return len(result)
