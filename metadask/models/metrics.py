"""Scores of class probabilities: pure functions on arrays, shared below the analysis layer.

The batch ensemble weights its members with them and :mod:`metadask.analysis.metrics` reports
them; they live here so that strategies and analysis never import each other. Class codes:
0 neither, 1 donor, 2 acceptor; a row is called a splice site when donor + acceptor >= 0.5.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from metadask.dataset.schema import LABELS

PROB_COLUMNS = tuple(f"prob_{c}" for c in LABELS)
RAW_COLUMNS = tuple(f"raw_{c}" for c in LABELS)


def safe_metric(fn, *args, **kw) -> float:
    """``fn(*args, **kw)`` as a float; NaN where scikit-learn finds it undefined (one class only)."""
    try:
        return float(fn(*args, **kw))
    except ValueError:
        return float("nan")


def f1_from_counts(tp: float, fp: float, fn: float) -> float:
    """F1 = 2 tp / (2 tp + fp + fn); 0 where nothing was called or true (scikit-learn's ``zero_division=0``)."""
    den = 2 * tp + fp + fn
    return float(2 * tp / den) if den else 0.0


def binary_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Splice-vs-neither F1, AP, ROC-AUC, FP and FN at donor + acceptor >= 0.5."""
    truth = np.asarray(y) != 0
    score = proba[:, 1] + proba[:, 2]
    call = score >= 0.5
    tp, fp, fn = int((call & truth).sum()), int((call & ~truth).sum()), int((~call & truth).sum())
    return {
        "f1": f1_from_counts(tp, fp, fn),
        "ap": safe_metric(average_precision_score, truth, score) if truth.any() else float("nan"),
        "roc_auc": safe_metric(roc_auc_score, truth, score),
        "fp": fp,
        "fn": fn,
        "tp": tp,
    }


def classification_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, macro F1, per-class F1 and AP of an (n x 3) probability array.

    Accuracy and F1 come from the confusion counts (one ``bincount``: the same values as
    scikit-learn's ``accuracy_score`` / ``f1_score(zero_division=0)`` without their label
    checks' copies of every row, which dominated a fold's metrics memory at millions of rows).
    """
    y = np.asarray(y).astype(np.int64, copy=False)
    n = len(LABELS)
    cm = np.bincount(y * n + proba.argmax(axis=1), minlength=n * n).reshape(n, n)
    tp = np.diag(cm)
    f1s = [f1_from_counts(tp[k], cm[:, k].sum() - tp[k], cm[k].sum() - tp[k]) for k in range(n)]
    out: dict[str, float] = {
        "accuracy": float(tp.sum() / len(y)) if len(y) else float("nan"),
        "macro_f1": float(np.mean(f1s)),
    }
    for k, name in enumerate(LABELS):
        out[f"f1_{name}"] = f1s[k]
        out[f"ap_{name}"] = safe_metric(average_precision_score, y == k, proba[:, k]) if (y == k).any() else float("nan")
    return out
