"""Inference with any trained bundle: ``load_model`` and ``predict_dataset`` on a cluster."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from metadask.cluster import connect
from metadask.dataset.schema import BASE_SCORE_COLUMNS, LABELS
from metadask.dataset.source import open_dataset
from metadask.errors import OutputError
from metadask.io import atomic_write
from metadask.models.base import MetaModel
from metadask.models.bundle import load_model

log = logging.getLogger("metadask")

__all__ = ["load_model", "predict_dataset", "predict_frame"]


def predict_frame(model: MetaModel, df: pd.DataFrame, gene_column: str = "gene_id") -> pd.DataFrame:
    """Ids, the three probabilities and the predicted class for a pandas frame."""
    p = model.predict_proba(df)
    out = pd.DataFrame(index=df.index)
    for c in (gene_column, "position", "transcript_id", "chrom", "strand", "absolute_position"):
        if c in df:
            out[c] = df[c].to_numpy()
    for k, name in enumerate(LABELS):
        out[f"prob_{name}"] = p[:, k]
    out["predicted_class"] = p.argmax(axis=1)
    out["predicted_label"] = pd.Categorical.from_codes(out["predicted_class"], categories=list(LABELS)).astype(str)
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
    scheduler: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
    connect_timeout: float | None = None,
    client: Any = None,
) -> int:
    """Score every row of ``dataset`` on the cluster; write one parquet file. Returns rows written."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputError(f"'{out}' exists. Pass --overwrite to replace it or choose another --out.")
    m = model if isinstance(model, MetaModel) else load_model(model, verbose=True)
    ds = open_dataset(dataset, storage_options=storage_options)
    wanted = [c for c in (ds.gene_column, "position", "transcript_id", "chrom", "strand", "absolute_position")
              if c in ds.schema.columns]
    present = [f for f in m.features if f in ds.schema.columns]
    columns = list(dict.fromkeys(wanted + present + [c for c in BASE_SCORE_COLUMNS if c in ds.schema.columns]))
    with connect(client=client, scheduler=scheduler, n_workers=n_workers, threads_per_worker=threads_per_worker,
                 memory_limit=memory_limit, connect_timeout=connect_timeout) as c, c.as_current():
        ddf = ds.to_dask(columns)
        meta = predict_frame(m, ddf._meta.assign(**{f: 0.0 for f in m.features if f not in ddf.columns}), ds.gene_column)
        scored = ddf.map_partitions(_score_partition, m, ds.gene_column, meta=meta)
        result = scored.compute()
    atomic_write(out, lambda tmp: result.to_parquet(tmp, index=False))
    log.info("Scored %s rows of %s with %s", f"{len(result):,}", ds.url, m.describe())
    return len(result)
