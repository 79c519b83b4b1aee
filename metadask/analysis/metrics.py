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
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

from metadask.dataset.schema import BASE_SCORE_COLUMNS, LABELS

PROB_COLUMNS = tuple(f"prob_{c}" for c in LABELS)
RAW_COLUMNS = tuple(f"raw_{c}" for c in LABELS)


def base_proba(pred: pd.DataFrame) -> np.ndarray:
    """The base model's scores as an (n x 3) array in class order."""
    return pred[list(BASE_SCORE_COLUMNS)].to_numpy(dtype=np.float64)


def meta_proba(pred: pd.DataFrame) -> np.ndarray:
    return pred[list(PROB_COLUMNS)].to_numpy(dtype=np.float64)


def _safe(fn, *args, **kw) -> float:
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
        "f1": _safe(f1_score, truth, call, zero_division=0),
        "ap": _safe(average_precision_score, truth, score) if truth.any() else float("nan"),
        "roc_auc": _safe(roc_auc_score, truth, score),
        "fp": int((call & ~truth).sum()),
        "fn": int((~call & truth).sum()),
        "tp": int((call & truth).sum()),
    }


def topk_per_gene(genes: np.ndarray, y: np.ndarray, score: np.ndarray, cls: int) -> pd.Series:
    """Per gene with k > 0 true sites of ``cls``: fraction of its top-k scored rows that are true."""
    df = pd.DataFrame({"gene": genes, "truth": np.asarray(y) == cls, "score": score})
    k = df.groupby("gene", sort=True)["truth"].sum()
    df = df[df["gene"].isin(k.index[k > 0])]
    if df.empty:
        return pd.Series(dtype=float)
    df = df.sort_values(["gene", "score"], ascending=[True, False], kind="stable")
    df["rank"] = df.groupby("gene").cumcount()
    top = df[df["rank"] < df["gene"].map(k)]
    return top.groupby("gene")["truth"].mean()


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
        out[f"ap_{name}"] = _safe(average_precision_score, y == k, proba[:, k]) if (y == k).any() else float("nan")
    return out


def prediction_metrics(pred: pd.DataFrame) -> dict[str, Any]:
    """Meta and base metrics on the same rows of a prediction frame (one fold or all)."""
    y = pred["label"].to_numpy()
    genes = pred["gene"].to_numpy()
    meta, base = meta_proba(pred), base_proba(pred)
    out: dict[str, Any] = {"n_genes": int(pred["gene"].nunique()), "n_rows": int(len(pred))}
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


def fold_metrics(oof: pd.DataFrame) -> pd.DataFrame:
    """One row of :func:`prediction_metrics` per CV fold of an out-of-fold prediction frame."""
    rows = []
    for fold, part in oof.groupby("fold", sort=True):
        rows.append({"fold": int(fold), **prediction_metrics(part)})
    return pd.DataFrame(rows)
