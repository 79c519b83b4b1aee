"""One ranking per (truth, score) pair: ROC-AUC, AP and curves equal scikit-learn's, each pair sorted once."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from metadask.models import metrics as M


def _pair(n: int, seed: int, prevalence: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < prevalence
    score = np.round(np.clip(rng.random(n) * 0.6 + truth * 0.3, 0, 1), 2)  # many ties, as base scores have
    return truth, score


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_equals_scikit_learns_metrics_and_curves_exactly(seed):
    truth, score = _pair(20_000, seed)
    r = M.ranking(truth, score)
    assert r.roc_auc == float(roc_auc_score(truth, score))
    assert r.ap == float(average_precision_score(truth, score))
    fpr, tpr, _ = roc_curve(truth, score)
    prec, rec, _ = precision_recall_curve(truth, score)
    for got, want in ((r.fpr, fpr), (r.tpr, tpr), (r.recall, rec[::-1]), (r.precision, prec[::-1])):
        assert len(got) == min(len(want), M.CURVE_POINTS)
        np.testing.assert_array_equal(got, M.thin(want, want)[0])


def test_one_class_gives_nan_where_scikit_learn_has_no_value():
    score = np.linspace(0, 1, 50)
    none = M.ranking(np.zeros(50, bool), score)
    assert np.isnan(none.roc_auc) and np.isnan(none.ap)
    every = M.ranking(np.ones(50, bool), score)
    assert np.isnan(every.roc_auc) and every.ap == float(average_precision_score(np.ones(50, bool), score))


def test_a_pair_asked_again_is_not_sorted_again(monkeypatch):
    import sklearn.metrics

    truth, score = _pair(5_000, 7)
    first = M.ranking(truth, score)
    calls: list[str] = []
    monkeypatch.setattr(sklearn.metrics, "roc_curve", lambda *a, **k: calls.append("roc") or roc_curve(*a, **k))
    monkeypatch.setattr(sklearn.metrics, "precision_recall_curve",
                        lambda *a, **k: calls.append("pr") or precision_recall_curve(*a, **k))
    again = M.ranking(truth.copy(), score.copy())  # same content, other arrays
    assert calls == [] and (again.roc_auc, again.ap) == (first.roc_auc, first.ap)
    np.testing.assert_array_equal(again.fpr, first.fpr)
    m = M.binary_metrics(truth.astype(int), np.column_stack([1 - score, score, np.zeros_like(score)]))
    assert calls == [] and m["roc_auc"] == first.roc_auc and m["ap"] == first.ap
    other = score + 0.5
    assert M.average_precision(truth, other) == float(average_precision_score(truth, other))
    assert calls == ["pr"]  # AP alone sorts once, for its PR curve
    M.ranking(truth, other)
    assert calls == ["pr", "roc"]
