"""Scores of class probabilities: pure functions on arrays, shared below the analysis layer.

The batch ensemble weights its members with them and :mod:`metadask.analysis.metrics` reports
them; they live here so that strategies and analysis never import each other. Class codes:
0 neither, 1 donor, 2 acceptor; a row is called a splice site when donor + acceptor >= 0.5.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, NamedTuple

import numpy as np

from metadask.dataset.schema import LABELS

PROB_COLUMNS = tuple(f"prob_{c}" for c in LABELS)
RAW_COLUMNS = tuple(f"raw_{c}" for c in LABELS)


class Ranking(NamedTuple):
    """What scikit-learn's ranking metrics give for one (truth, score) pair: ROC-AUC and AP
    (NaN where undefined), and the ROC and PR curves thinned for plotting."""

    roc_auc: float
    ap: float
    fpr: np.ndarray
    tpr: np.ndarray
    recall: np.ndarray
    precision: np.ndarray


CURVE_POINTS = 1000
"""Points kept of each plotted curve (:func:`thin`)."""
_RANKINGS: OrderedDict[bytes, Any] = OrderedDict()


def thin(x: np.ndarray, y: np.ndarray, max_points: int = CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` evenly spaced points of a curve, endpoints kept (for plotting)."""
    if len(x) <= max_points:
        return x, y
    idx = np.unique(np.linspace(0, len(x) - 1, max_points).round().astype(np.int64))
    return x[idx], y[idx]


def _remembered(kind: str, truth: np.ndarray, score: np.ndarray, compute: Any) -> Any:
    """``compute(truth, score)``, remembered for the last 64 (kind, pair) by a digest of the arrays' content."""
    digest = hashlib.blake2b(kind.encode(), digest_size=16)
    digest.update(truth.tobytes())
    digest.update(str(score.dtype).encode())
    digest.update(np.ascontiguousarray(score).tobytes())
    key = digest.digest()
    hit = _RANKINGS.get(key)
    if hit is None:
        hit = _RANKINGS[key] = compute(truth, score)
        while len(_RANKINGS) > 64:
            _RANKINGS.popitem(last=False)
    _RANKINGS.move_to_end(key)
    return hit


def _pr(truth: np.ndarray, score: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    from sklearn.metrics import precision_recall_curve

    if not truth.any():
        return float("nan"), np.array([]), np.array([])
    prec, rec, _ = precision_recall_curve(truth, score)
    ap = float(max(0.0, -np.sum(np.diff(rec) * prec[:-1])))  # average_precision_score's step integral
    return (ap, *thin(rec[::-1], prec[::-1]))


def _roc(truth: np.ndarray, score: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    from sklearn.metrics import auc, roc_curve

    if truth.all() or not truth.any():
        return float("nan"), np.array([]), np.array([])
    fpr, tpr, _ = roc_curve(truth, score)
    return (float(auc(fpr, tpr)), *thin(fpr, tpr))  # roc_auc_score's area


def average_precision(truth: np.ndarray, score: np.ndarray) -> float:
    """``average_precision_score(truth, score)`` (NaN without positives), one sort per pair (see :func:`ranking`)."""
    return _remembered("pr", np.asarray(truth, dtype=bool), np.asarray(score), _pr)[0]


def roc_auc(truth: np.ndarray, score: np.ndarray) -> float:
    """``roc_auc_score(truth, score)`` (NaN with one class only), one sort per pair (see :func:`ranking`)."""
    return _remembered("roc", np.asarray(truth, dtype=bool), np.asarray(score), _roc)[0]


def ranking(truth: np.ndarray, score: np.ndarray) -> Ranking:
    """ROC-AUC, AP and the thinned curves of ``score`` for binary ``truth``.

    The same numbers as scikit-learn's ``roc_auc_score`` (the ``auc`` of ``roc_curve``) and
    ``average_precision_score`` (the step integral of ``precision_recall_curve``). The
    evaluation asks for the same pairs several times (the summary's per-class and binary
    figures, the plots' curves): the last 64 are remembered by their content (a digest of the
    two arrays), so each pair is sorted once for its PR curve and once for its ROC curve.
    """
    truth, score = np.asarray(truth, dtype=bool), np.asarray(score)
    ap, rec, prec = _remembered("pr", truth, score, _pr)
    auc_, fpr, tpr = _remembered("roc", truth, score, _roc)
    return Ranking(auc_, ap, fpr, tpr, rec, prec)


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
        "ap": average_precision(truth, score),
        "roc_auc": roc_auc(truth, score),
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
        out[f"ap_{name}"] = average_precision(y == k, proba[:, k])
    return out
