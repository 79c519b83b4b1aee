"""Per-class probability calibration stored as plain numbers.

scikit-learn fits the calibrators (``LogisticRegression`` on the logit for Platt scaling,
``IsotonicRegression`` for isotonic); metadask keeps only their numbers so a model bundle
needs no pickle: Platt is ``sigmoid(a * logit(p) + b)``, isotonic is a piecewise-linear map
through the fitted thresholds (``numpy.interp``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

_EPS = 1e-7


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class Calibrator:
    """A fitted one-dimensional calibration map for one class."""

    method: str
    params: dict[str, Any]

    @property
    def base_column(self) -> str | None:
        """The base-score column a ``stacked`` calibrator reads (None for the others)."""
        return self.params.get("base_column") if self.method == "stacked" else None

    def __call__(self, p: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        if self.method == "identity":
            return p
        if self.method == "stacked":
            if base is None:
                raise ValueError(f"a stacked calibrator needs the base score '{self.params['base_column']}'")
            z = self.params["a"] * _logit(p) + self.params["b"] * _logit(base) + self.params["c"]
            return 1.0 / (1.0 + np.exp(-z))
        if self.method == "platt":
            z = self.params["a"] * _logit(p) + self.params["b"]
            return 1.0 / (1.0 + np.exp(-z))
        if self.method == "isotonic":
            return np.interp(p, self.params["x"], self.params["y"])
        raise ValueError(f"Unknown calibration method {self.method!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "params": self.params}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibrator:
        if d.get("method") not in ("identity", "platt", "isotonic", "stacked"):
            raise ValueError(f"Unknown calibration method {d.get('method')!r}")
        return cls(method=d["method"], params=dict(d.get("params", {})))


IDENTITY = Calibrator("identity", {})


def fit_calibrator(p: np.ndarray, y: np.ndarray, method: str, sample_weight: np.ndarray | None = None, *,
                   base: np.ndarray | None = None, base_column: str | None = None) -> Calibrator:
    """Fit one class's calibrator on probabilities ``p`` and binary outcomes ``y``.

    ``sample_weight`` (inverse inclusion probabilities of sampled rows) makes the calibrated
    probabilities refer to the distribution the rows were sampled from (every position).
    ``stacked`` is Platt scaling with the base model's score of the class as a second input,
    ``sigmoid(a * logit(p) + b * logit(base) + c)``: a logistic stacker of meta and base that
    learns how far to trust each (``base`` holds the scores, ``base_column`` names them).
    """
    y = np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:
        return IDENTITY
    if method == "stacked":
        from sklearn.linear_model import LogisticRegression

        if base is None or base_column is None:
            raise ValueError("a stacked calibrator needs the base scores and their column name")
        lr = LogisticRegression(C=1e6, solver="lbfgs", max_iter=1000)
        lr.fit(np.column_stack([_logit(p), _logit(base)]), y, sample_weight=sample_weight)
        return Calibrator("stacked", {"a": float(lr.coef_[0, 0]), "b": float(lr.coef_[0, 1]), "c": float(lr.intercept_[0]),
                                      "base_column": str(base_column)})
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=1e6, solver="lbfgs", max_iter=1000)
        lr.fit(_logit(p).reshape(-1, 1), y, sample_weight=sample_weight)
        return Calibrator("platt", {"a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])})
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(np.asarray(p, dtype=np.float64), y,
                                                                                   sample_weight=sample_weight)
        return Calibrator("isotonic", {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()})
    raise ValueError(f"Unknown calibration method {method!r}")


def combine(p: np.ndarray) -> np.ndarray:
    """Normalise per-class one-vs-rest probabilities (n x 3) into probabilities summing to 1.

    Each row is divided by its sum; a row whose three probabilities are all ~0 (possible
    after isotonic calibration) becomes uniform.
    """
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    s = p.sum(axis=1, keepdims=True)
    out = np.divide(p, s, out=np.full_like(p, 1.0 / p.shape[1]), where=s > 1e-12)
    return out
