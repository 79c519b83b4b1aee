"""Scores of class probabilities: pure functions on arrays, shared below the analysis layer.

The batch ensemble weights its members with them and :mod:`metadask.analysis.metrics` reports
them; they live here so that strategies and analysis never import each other. Class codes:
0 neither, 1 donor, 2 acceptor; a row is called a splice site when donor + acceptor >= 0.5.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

from metadask.dataset.schema import LABELS

PROB_COLUMNS = tuple(f"prob_{c}" for c in LABELS)
RAW_COLUMNS = tuple(f"raw_{c}" for c in LABELS)


def safe_metric(fn, *args, **kw) -> float:
    """``fn(*args, **kw)`` as a float; NaN where scikit-learn finds it undefined (one class only)."""
    try:
        return float(fn(*args, **kw))
    except ValueError:
        return float("nan")


def binary_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Splice-vs-neither F1, AP, ROC-AUC, FP and FN at donor + acceptor >= 0.5."""
    truth = np.asarray(y) != 0
    score = proba[:, 1] + proba[:, 2]
    call = score >= 0.5
    return {
        "f1": safe_metric(f1_score, truth, call, zero_division=0),
        "ap": safe_metric(average_precision_score, truth, score) if truth.any() else float("nan"),
        "roc_auc": safe_metric(roc_auc_score, truth, score),
        "fp": int((call & ~truth).sum()),
        "fn": int((~call & truth).sum()),
        "tp": int((call & truth).sum()),
    }


def classification_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, macro F1, per-class F1 and AP of an (n x 3) probability array."""
    y = np.asarray(y)
    pred = proba.argmax(axis=1)
    out: dict[str, float] = {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=[0, 1, 2], zero_division=0)),
    }
    f1s = f1_score(y, pred, average=None, labels=[0, 1, 2], zero_division=0)
    for k, name in enumerate(LABELS):
        out[f"f1_{name}"] = float(f1s[k])
        out[f"ap_{name}"] = safe_metric(average_precision_score, y == k, proba[:, k]) if (y == k).any() else float("nan")
    return out
