"""Metrics as pure functions on arrays / prediction frames (no I/O, no plotting).

Conventions: class codes 0 neither, 1 donor, 2 acceptor. The base model's class is the argmax
of its three scores; both models call a row a splice site when donor + acceptor >= 0.5.
A prediction frame has columns ``gene``, ``label``, ``{neither,donor,acceptor}_score`` (base)
and ``prob_{neither,donor,acceptor}`` (meta).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from metadask.dataset.schema import BASE_SCORE_COLUMNS, LABELS
from metadask.models.metrics import (  # noqa: F401  (re-exported: analysis reads them from here)
    PROB_COLUMNS, RAW_COLUMNS, average_precision, binary_metrics, classification_metrics, ranking, roc_auc,
)
from metadask.results import OOFParts


def base_proba(pred: pd.DataFrame) -> np.ndarray:
    """The base model's scores as an (n x 3) array in class order."""
    return pred[list(BASE_SCORE_COLUMNS)].to_numpy(dtype=np.float64)


def meta_proba(pred: pd.DataFrame) -> np.ndarray:
    return pred[list(PROB_COLUMNS)].to_numpy(dtype=np.float64)


def topk_per_gene(genes: np.ndarray, y: np.ndarray, score: np.ndarray, cls: int) -> pd.Series:
    """Per gene with k > 0 true sites of ``cls``: fraction of its top-k scored rows that are true.

    Ties in score are broken by row order (stable sort). Vectorised: one sort of all rows.
    """
    genes = np.asarray(genes)
    # integer gene codes (a categorical column's) factorize as they are; names as strings
    codes, uniques = pd.factorize(genes if genes.dtype.kind in "iu" else pd.Series(genes, dtype=object), sort=True)
    truth = np.asarray(y) == cls
    n_genes = len(uniques)
    k = np.bincount(codes, weights=truth, minlength=n_genes).astype(np.int64)
    if not (k > 0).any():
        return pd.Series(dtype=float)
    order = np.lexsort((-np.asarray(score, dtype=np.float64), codes))  # by gene, then score descending
    sorted_codes = codes[order]
    starts = np.searchsorted(sorted_codes, np.arange(n_genes))
    rank = np.arange(len(order)) - starts[sorted_codes]
    top = rank < k[sorted_codes]
    hits = np.bincount(sorted_codes[top], weights=truth[order][top], minlength=n_genes)
    has = k > 0
    return pd.Series(hits[has] / k[has], index=pd.Index(uniques[has], dtype=object))


def prediction_metrics(pred: pd.DataFrame) -> dict[str, Any]:
    """Meta and base metrics on the same rows of a prediction frame (one fold or all)."""
    y = pred["label"].to_numpy()
    genes = gene_keys(pred["gene"])
    meta, base = meta_proba(pred), base_proba(pred)
    out: dict[str, Any] = {"n_genes": int(len(np.unique(genes))), "n_rows": int(len(pred))}
    out.update(classification_metrics(y, meta))
    for prefix, proba in (("base", base), ("meta", meta)):
        b = binary_metrics(y, proba)
        out[f"{prefix}_binary_f1"] = b["f1"]
        out[f"{prefix}_binary_ap"] = b["ap"]
        out[f"{prefix}_binary_roc_auc"] = b["roc_auc"]
        out[f"{prefix}_fp"] = b["fp"]
        out[f"{prefix}_fn"] = b["fn"]
        for cls in (1, 2):
            out[f"{prefix}_topk_{LABELS[cls]}"] = float(topk_per_gene(genes, y, proba[:, cls], cls).mean())
    base_cls = classification_metrics(y, base)
    out["base_accuracy"] = base_cls["accuracy"]
    out["base_macro_f1"] = base_cls["macro_f1"]
    out["delta_fp"] = out["meta_fp"] - out["base_fp"]
    out["delta_fn"] = out["meta_fn"] - out["base_fn"]
    return out


def gene_keys(genes: pd.Series) -> np.ndarray:
    """One key per row that identifies its gene: a categorical column's integer codes (no strings built), else the names."""
    if isinstance(genes.dtype, pd.CategoricalDtype):
        return genes.cat.codes.to_numpy()
    return genes.to_numpy()


FOLD_COLUMNS = ("gene", "label", *BASE_SCORE_COLUMNS, *PROB_COLUMNS)
"""The columns :func:`prediction_metrics` reads."""


def fold_metrics(oof: OOFParts | pd.DataFrame) -> pd.DataFrame:
    """One row of :func:`prediction_metrics` per CV fold of out-of-fold predictions.

    A fold at a time, only the columns the metrics read, where the parts are: on the workers
    for a run's :class:`~metadask.results.OOFParts` (the client never holds a fold's rows nor
    its sorting and curve arrays, ~200 bytes a row in scikit-learn's AP and ROC-AUC), the
    folds in parallel; here for a frame. The figures are the same.
    """
    scored = OOFParts.of(oof).map_folds(FOLD_COLUMNS, prediction_metrics, "the per-fold metrics")
    rows = [{"fold": fold, **r} for fold, r in scored.items()]
    return pd.DataFrame(rows)


# -- evaluation extensions: calibration, confusion, base vs meta, per gene -------------------

def one_hot(y: np.ndarray, n_classes: int = 3) -> np.ndarray:
    y = np.asarray(y, dtype=np.int64)
    out = np.zeros((len(y), n_classes), dtype=np.float64)
    out[np.arange(len(y)), y] = 1.0
    return out


def brier_score(truth: np.ndarray, p: np.ndarray) -> float:
    """Mean squared error of probabilities ``p`` against 0/1 outcomes ``truth``.

    With (n x K) arrays this is the multiclass Brier score: the mean over rows of the sum over
    classes (range 0..2); with vectors, the binary Brier score (range 0..1).
    """
    truth = np.asarray(truth, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if len(p) == 0:
        return float("nan")
    sq = (p - truth) ** 2
    return float(sq.sum(axis=1).mean()) if sq.ndim == 2 else float(sq.mean())


def reliability_table(truth: np.ndarray, p: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Equal-width bins of predicted probability: count, mean prediction, observed frequency.

    Bin ``b`` holds predictions in ``[b / n_bins, (b + 1) / n_bins)`` (the last bin includes 1).
    Empty bins are kept with count 0 and NaN means.
    """
    truth = np.asarray(truth, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    b = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(b, minlength=n_bins).astype(np.int64)
    sum_p = np.bincount(b, weights=p, minlength=n_bins)
    sum_t = np.bincount(b, weights=truth, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / np.maximum(count, 1), np.nan)
        freq = np.where(count > 0, sum_t / np.maximum(count, 1), np.nan)
    return pd.DataFrame({
        "bin": np.arange(n_bins), "lower": np.arange(n_bins) / n_bins, "upper": np.arange(1, n_bins + 1) / n_bins,
        "count": count, "mean_predicted": mean_p, "observed_frequency": freq,
    })


def ece_from_table(t: pd.DataFrame) -> float:
    """ECE of a :func:`reliability_table`: sum of (bin share of rows) * |mean prediction - observed|."""
    n = t["count"].sum()
    if n == 0:
        return float("nan")
    used = t[t["count"] > 0]
    return float((used["count"] / n * (used["mean_predicted"] - used["observed_frequency"]).abs()).sum())


def expected_calibration_error(truth: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """ECE: sum over equal-width bins of (bin share of rows) * |mean prediction - observed frequency|."""
    return ece_from_table(reliability_table(truth, p, n_bins))


def top_label_ece(y: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> float:
    """Multiclass (top-label) ECE: confidence = max probability, outcome = argmax is right."""
    proba = np.asarray(proba, dtype=np.float64)
    if len(proba) == 0:
        return float("nan")
    return expected_calibration_error(proba.argmax(axis=1) == np.asarray(y), proba.max(axis=1), n_bins)


def calibration_metrics(y: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Brier score and ECE of an (n x 3) probability array: multiclass, top-label and per class.

    Per class, the column is scored one-vs-rest against ``y == k``; the columns need not sum
    to 1 (uncalibrated one-vs-rest sigmoids are scored as they are).
    """
    y = np.asarray(y)
    out: dict[str, Any] = {"n_bins": n_bins}
    rowsum = proba.sum(axis=1, keepdims=True)
    normalised = np.divide(proba, rowsum, out=np.full_like(proba, 1.0 / proba.shape[1]), where=rowsum > 1e-12)
    out["brier_multiclass"] = brier_score(one_hot(y, proba.shape[1]), normalised)
    out["ece_top_label"] = top_label_ece(y, normalised, n_bins)
    for k, name in enumerate(LABELS):
        out[f"brier_{name}"] = brier_score(y == k, proba[:, k])
        out[f"ece_{name}"] = expected_calibration_error(y == k, proba[:, k], n_bins)
    return out


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """Confusion matrix: rows are true classes, columns predicted classes (class-code order)."""
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    return np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_report(y: np.ndarray, proba: np.ndarray) -> dict[str, dict[str, float]]:
    """Per class: support, precision, recall, F1 (argmax calls), AP and ROC-AUC (one-vs-rest)."""
    y = np.asarray(y)
    cm = confusion(y, proba.argmax(axis=1))
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(LABELS):
        tp = float(cm[k, k])
        fp = float(cm[:, k].sum() - tp)
        fn = float(cm[k, :].sum() - tp)
        truth = y == k
        out[name] = {
            "support": int(truth.sum()),
            "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / (tp + fn) if tp + fn else 0.0,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
            "ap": average_precision(truth, proba[:, k]),
            "roc_auc": roc_auc(truth, proba[:, k]),
        }
    return out


def corrections(y: np.ndarray, base_pred: np.ndarray, meta_pred: np.ndarray) -> dict[str, int]:
    """Base vs meta on the same rows: corrections (base wrong, meta right), regressions
    (base right, meta wrong), rows both get right / wrong, and net = corrections - regressions."""
    y = np.asarray(y)
    base_ok = np.asarray(base_pred) == y
    meta_ok = np.asarray(meta_pred) == y
    c = int((~base_ok & meta_ok).sum())
    r = int((base_ok & ~meta_ok).sum())
    return {"corrections": c, "regressions": r, "both_correct": int((base_ok & meta_ok).sum()),
            "both_wrong": int((~base_ok & ~meta_ok).sum()), "net": c - r}


def binary_calls(proba: np.ndarray) -> np.ndarray:
    """Splice-vs-neither calls: donor + acceptor >= 0.5."""
    return (proba[:, 1] + proba[:, 2]) >= 0.5


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)


def per_gene_table(pred: pd.DataFrame) -> pd.DataFrame:
    """Per gene, base and meta on the same rows: splice-vs-neither TP / FP / FN and F1, top-k
    accuracy per splice class, argmax corrections / regressions, and meta - base differences.

    F1 is NaN for a gene with no true sites and no calls; top-k is NaN for a gene without
    sites of that class.
    """
    y = pred["label"].to_numpy()
    genes = pred["gene"].astype(str).to_numpy()
    truth = y != 0
    frame = pd.DataFrame({"gene": genes, "site": truth, "donor": y == 1, "acceptor": y == 2})
    models = {"base": base_proba(pred), "meta": meta_proba(pred)}
    for prefix, proba in models.items():
        call = binary_calls(proba)
        frame[f"{prefix}_tp"] = call & truth
        frame[f"{prefix}_fp"] = call & ~truth
        frame[f"{prefix}_fn"] = ~call & truth
        frame[f"{prefix}_correct"] = proba.argmax(axis=1) == y
    frame["corrections"] = ~frame["base_correct"] & frame["meta_correct"]
    frame["regressions"] = frame["base_correct"] & ~frame["meta_correct"]
    g = frame.groupby("gene", sort=True)
    out = pd.DataFrame({"n_rows": g.size(), "n_donor": g["donor"].sum(), "n_acceptor": g["acceptor"].sum()})
    if "fold" in pred:
        out.insert(0, "fold", pred.groupby(pred["gene"].astype(str), sort=True)["fold"].first().astype(int))
    for prefix in models:
        for m in ("tp", "fp", "fn"):
            out[f"{prefix}_{m}"] = g[f"{prefix}_{m}"].sum().astype(int)
        out[f"{prefix}_f1"] = _f1(out[f"{prefix}_tp"], out[f"{prefix}_fp"], out[f"{prefix}_fn"])
        for cls in (1, 2):
            out[f"{prefix}_topk_{LABELS[cls]}"] = topk_per_gene(genes, y, models[prefix][:, cls], cls).reindex(out.index)
        out[f"{prefix}_accuracy"] = g[f"{prefix}_correct"].mean()
    out["corrections"] = g["corrections"].sum().astype(int)
    out["regressions"] = g["regressions"].sum().astype(int)
    for m in ("tp", "fp", "fn", "f1", "topk_donor", "topk_acceptor", "accuracy"):
        out[f"delta_{m}"] = out[f"meta_{m}"] - out[f"base_{m}"]
    out.index.name = "gene"
    return out.reset_index()


def curve_data(y: np.ndarray, proba_by_model: dict[str, np.ndarray]) -> dict[str, Any]:
    """ROC and PR curves per task (binary splice-vs-neither, then each class one-vs-rest) and model.

    Returns ``{task: {model: {"fpr", "tpr", "auc", "precision", "recall", "ap", "prevalence"}}}``
    with curves thinned to :data:`~metadask.models.metrics.CURVE_POINTS` for plotting (AUC / AP from the full curves;
    :func:`~metadask.models.metrics.ranking`, so the summary's figures of the same pairs are not
    sorted again).
    """
    y = np.asarray(y)
    tasks: dict[str, np.ndarray] = {"splice_vs_neither": y != 0, **{name: y == k for k, name in enumerate(LABELS)}}
    out: dict[str, Any] = {}
    for task, truth in tasks.items():
        out[task] = {}
        if truth.all() or not truth.any():
            continue
        for model, proba in proba_by_model.items():
            score = proba[:, 1] + proba[:, 2] if task == "splice_vs_neither" else proba[:, LABELS.index(task)]
            r = ranking(truth, score)
            out[task][model] = {
                "fpr": r.fpr, "tpr": r.tpr, "auc": r.roc_auc, "recall": r.recall, "precision": r.precision,
                "ap": r.ap, "prevalence": float(truth.mean()),
            }
    return out
