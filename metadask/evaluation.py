"""``evaluate()``: score every position of held-out labelled data with one model, base vs meta.

The same statistics, metrics and files as a training run's ``full_body_evaluation/``
(:mod:`metadask.analysis.full_body`), for data the model never saw: every gene is scored by
the model; the meta-model is judged at its stored threshold, the base model at a threshold
cross-fitted over hash groups of genes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from metadask.analysis import full_body as fb
from metadask.cluster import CONNECT_OPTIONS, connect
from metadask.dataset.index import build_gene_index
from metadask.dataset.source import open_dataset
from metadask.errors import ConfigError, OutputError
from metadask.io import atomic_write_dir
from metadask.models.base import MetaModel
from metadask.models.bundle import load_model

log = logging.getLogger("metadask")


def evaluate(
    model: str | os.PathLike | MetaModel,
    dataset: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    threshold: float | None = None,
    label_column: str = "splice_type",
    gene_column: str = "gene_id",
    storage_options: dict[str, Any] | None = None,
    skip_plots: bool = False,
    client: Any = None,
    **cluster_options: Any,
) -> dict[str, Any]:
    """Evaluate ``model`` on every row of ``dataset``; write ``metrics.json``, ``curves.csv`` and plots.

    Returns the metrics (``{"base": ..., "meta": ..., "thresholds": ...}``, keys in
    docs/analysis.md). ``threshold`` overrides the model's stored splice threshold.
    """
    unknown = sorted(set(cluster_options) - set(CONNECT_OPTIONS))
    if unknown:
        raise ConfigError(f"Unknown option '{unknown[0]}' for evaluate. Known: {', '.join(CONNECT_OPTIONS)}.")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"'{out}' is not empty. Pass --overwrite to replace it or choose another --out-dir.")
    m = model if isinstance(model, MetaModel) else load_model(model, verbose=True)
    t = float(m.thresholds["splice"] if threshold is None else threshold)
    if not 0.0 < t <= 1.0:
        raise ConfigError(f"--threshold must be in (0, 1] (found {t}). Use e.g. --threshold 0.5.")
    ds = open_dataset(dataset, storage_options=storage_options, label_column=label_column, gene_column=gene_column)
    fb.check_eval_dataset(ds, m.features)
    with connect(client=client, **cluster_options) as c, c.as_current():
        index = build_gene_index(ds)
        log.info("Evaluating %s on every row of %s: %d genes, %s rows", m.describe(), ds.url, index.n_genes,
                 f"{index.n_rows:,}")
        by_fold = fb.score_full_body(ds, index, lambda _fold: m, {}, c, pseudo_folds=True)
    source = f"every row of {index.n_genes} genes of {ds.url} (held out: scored by one model)"
    metrics = fb.full_body_metrics(by_fold, meta_threshold=t, source=source)
    metrics["model"] = {"description": m.describe(), "stored_thresholds": dict(m.thresholds)}
    atomic_write_dir(out, lambda tmp: fb.write_full_body(tmp, by_fold, metrics, skip_plots=skip_plots))
    log.info("Evaluation: binary F1 meta %.3f at threshold %.3f vs base %.3f; AP donor %.3f vs %.3f, acceptor %.3f vs "
             "%.3f; written to %s", metrics["meta"]["f1_at_threshold"], t, metrics["base"]["f1_at_threshold"],
             metrics["meta"]["ap_donor"], metrics["base"]["ap_donor"], metrics["meta"]["ap_acceptor"],
             metrics["base"]["ap_acceptor"], out)
    return metrics
