"""Honest evaluation artifacts from out-of-fold predictions.

* ``meta_evaluation_summary.json``: meta and base metrics on the same out-of-fold rows,
  calibration before / after, base vs meta corrections and regressions.
* ``base_vs_meta_performance.tsv``: one row per gene, base and meta side by side.
* ``ensemble_cv_results.csv``: per-fold generalisation figures of the final model type
  (the batch ensemble's own ensemble CV when the strategy produced one, else the strategy's
  gene-grouped CV folds), so every strategy writes the same file.

Every number here is computed from ``result.oof``: each row was predicted by models that
never saw its gene, and ``prob_*`` were calibrated by calibrators fit on other folds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metadask.analysis.metrics import (
    PROB_COLUMNS,
    base_proba,
    binary_calls,
    binary_metrics,
    calibration_metrics,
    classification_metrics,
    confusion,
    corrections,
    curve_data,
    ece_from_table,
    meta_proba,
    per_class_report,
    per_gene_table,
    reliability_table,
    topk_per_gene,
)
from metadask.dataset.schema import BASE_SCORE_COLUMNS, LABELS
from metadask.io import write_csv, write_json
from metadask.results import TrainingResult, raw_proba

EVALUATION_NOTE = (
    "out-of-fold: every row was predicted by models that never saw its gene; prob_* were calibrated "
    "by calibrators fit on the other folds' out-of-fold predictions (cross-fitted)"
)


def _model_block(y: np.ndarray, genes: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    pred = proba.argmax(axis=1)
    cls = classification_metrics(y, proba)
    b = binary_metrics(y, proba)
    tp, fp, fn = b["tp"], b["fp"], b["fn"]
    per_class = per_class_report(y, proba)
    aucs = [v["roc_auc"] for v in per_class.values()]
    return {
        "accuracy": cls["accuracy"],
        "macro_f1": cls["macro_f1"],
        "roc_auc_macro_ovr": float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else float("nan"),
        "per_class": per_class,
        "confusion_matrix": {"rows_true_cols_predicted": list(LABELS), "counts": confusion(y, pred).tolist()},
        "binary_splice_vs_neither": {
            **b, "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
            "threshold": "donor + acceptor >= 0.5",
        },
        "topk_accuracy": {LABELS[c]: float(topk_per_gene(genes, y, proba[:, c], c).mean()) for c in (1, 2)},
    }


def evaluation_summary(oof: pd.DataFrame, *, calib_method: str | None = None, n_bins: int = 10) -> dict[str, Any]:
    """The content of ``meta_evaluation_summary.json`` for an out-of-fold prediction frame."""
    y = oof["label"].to_numpy()
    genes = oof["gene"].astype(str).to_numpy()
    meta, base = meta_proba(oof), base_proba(oof)
    out: dict[str, Any] = {
        "evaluation": EVALUATION_NOTE,
        "n_rows": int(len(oof)),
        "n_genes": int(oof["gene"].nunique()),
        "n_folds": int(oof["fold"].nunique()) if "fold" in oof else None,
        "class_counts": {name: int((y == k).sum()) for k, name in enumerate(LABELS)},
        "meta": _model_block(y, genes, meta),
        "base": _model_block(y, genes, base),
    }
    calibration: dict[str, Any] = {"method": calib_method or "none", "n_bins": n_bins}
    if all(f"margin_{c}" in oof for c in LABELS):
        calibration["before"] = calibration_metrics(y, raw_proba(oof), n_bins)
        calibration["before"]["scored"] = "raw_*: uncalibrated one-vs-rest sigmoids of the out-of-fold margins"
    calibration["after"] = calibration_metrics(y, meta, n_bins)
    calibration["after"]["scored"] = "prob_*: cross-fitted calibrated probabilities (sum to 1)"
    calibration["base_model"] = calibration_metrics(y, base, n_bins)
    out["calibration"] = calibration
    mb, bb = out["meta"]["binary_splice_vs_neither"], out["base"]["binary_splice_vs_neither"]
    bin_truth = y != 0
    base_bin_ok = binary_calls(base) == bin_truth
    meta_bin_ok = binary_calls(meta) == bin_truth
    out["base_vs_meta"] = {
        "class_argmax": corrections(y, base.argmax(axis=1), meta.argmax(axis=1)),
        "splice_vs_neither": {
            "corrections": int((~base_bin_ok & meta_bin_ok).sum()),
            "regressions": int((base_bin_ok & ~meta_bin_ok).sum()),
            "fp": {"base": bb["fp"], "meta": mb["fp"], "delta": mb["fp"] - bb["fp"]},
            "fn": {"base": bb["fn"], "meta": mb["fn"], "delta": mb["fn"] - bb["fn"]},
            "tp": {"base": bb["tp"], "meta": mb["tp"], "delta": mb["tp"] - bb["tp"]},
            "f1": {"base": bb["f1"], "meta": mb["f1"], "delta": mb["f1"] - bb["f1"]},
            "ap": {"base": bb["ap"], "meta": mb["ap"], "delta": mb["ap"] - bb["ap"]},
        },
        "accuracy": {"base": out["base"]["accuracy"], "meta": out["meta"]["accuracy"],
                     "delta": out["meta"]["accuracy"] - out["base"]["accuracy"]},
        "macro_f1": {"base": out["base"]["macro_f1"], "meta": out["meta"]["macro_f1"],
                     "delta": out["meta"]["macro_f1"] - out["base"]["macro_f1"]},
    }
    return out


def cv_mean_std(fold_metrics: pd.DataFrame | None) -> dict[str, dict[str, float]]:
    """Mean and (population) std over folds of every numeric per-fold metric."""
    if fold_metrics is None or fold_metrics.empty:
        return {}
    num = fold_metrics.drop(columns=["fold"], errors="ignore").select_dtypes("number")
    return {c: {"mean": float(num[c].mean()), "std": float(num[c].std(ddof=0))} for c in num}


def ensemble_cv_table(result: TrainingResult) -> pd.DataFrame:
    """Per-fold generalisation figures for ``ensemble_cv_results.csv``.

    A strategy that evaluated its final ensemble itself leaves a DataFrame in
    ``result.details["ensemble_cv_results"]``; it is written as it is, with
    ``evaluation = "ensemble_cv"``. Every other strategy gets its own gene-grouped CV folds
    (``gene_cv_metrics.csv``'s headline columns) with ``evaluation = "gene_cv"``: the same
    question (how does this kind of model do on genes it never saw) answered by its CV.
    """
    ens = result.details.get("ensemble_cv_results")
    if isinstance(ens, pd.DataFrame) and not ens.empty:
        table = ens.copy()
        source = "ensemble_cv"
    else:
        fm = result.fold_metrics if result.fold_metrics is not None else pd.DataFrame()
        keep = [c for c in ("fold", "n_genes", "n_rows", "accuracy", "macro_f1", "meta_binary_f1", "base_binary_f1",
                            "meta_binary_ap", "base_binary_ap", "meta_binary_roc_auc", "meta_fp", "meta_fn",
                            "base_fp", "base_fn") if c in fm]
        table = fm[keep].copy()
        source = "gene_cv"
    table.insert(0, "strategy", result.strategy)
    table.insert(0, "evaluation", source)
    return table


def performance_data(oof: pd.DataFrame) -> dict[str, Any]:
    """What the performance plots draw: ROC / PR curves (thinned), reliability tables and ECE per stage, confusion matrices."""
    y = oof["label"].to_numpy()
    meta, base = meta_proba(oof), base_proba(oof)
    stages = {"after": meta, "base_model": base}
    if all(f"margin_{c}" in oof for c in LABELS):
        stages = {"before": raw_proba(oof), **stages}
    tables = {s: {c: reliability_table(y == k, p[:, k]) for k, c in enumerate(LABELS)} for s, p in stages.items()}
    return {
        "curves": curve_data(y, {"base": base, "meta": meta}),
        "reliability": tables,
        "ece": {s: {c: ece_from_table(t) for c, t in by.items()} for s, by in tables.items()},
        "confusion": {"base": confusion(y, base.argmax(axis=1)), "meta": confusion(y, meta.argmax(axis=1))},
    }


EVALUATION_COLUMNS = ("gene", "label", "fold", *BASE_SCORE_COLUMNS, *PROB_COLUMNS, *(f"margin_{c}" for c in LABELS))
"""The out-of-fold columns the evaluation reads."""


def evaluation_data(oof: pd.DataFrame, calib_method: str | None, plots: bool = True
                    ) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any] | None]:
    """The evaluation summary, the per-gene table and (``plots``) the performance plots' data of an OOF frame."""
    return (evaluation_summary(oof, calib_method=calib_method), per_gene_table(oof),
            performance_data(oof) if plots else None)


def write_evaluation(out_dir: Path, result: TrainingResult, calib_method: str | None, *, plots: bool = True
                     ) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any] | None]:
    """Write the three evaluation files; return the summary dict, the per-gene table and the plots' data.

    Computed where the out-of-fold parts are: for a run, on one worker, which gathers the
    columns the evaluation reads from every part and computes everything over every row (exact
    figures, scikit-learn's curves); the client receives only the results, whose size does not
    depend on the rows (the per-gene table grows with the genes).
    """
    summary, genes, data = result.oof_parts.whole(EVALUATION_COLUMNS, evaluation_data, calib_method, plots,
                                                  what="the out-of-fold evaluation")
    summary["cv"] = cv_mean_std(result.fold_metrics)
    write_json(out_dir / "meta_evaluation_summary.json", summary)
    write_csv(out_dir / "base_vs_meta_performance.tsv", genes, sep="\t", float_format="%.6g")
    write_csv(out_dir / "ensemble_cv_results.csv", ensemble_cv_table(result), float_format="%.6g")
    return summary, genes, data
