"""Three one-vs-rest logistic models on standardised features, as plain numbers.

The ``incremental`` strategy trains this model with SGD over gene-aligned partitions. A row
``x`` is standardised with the training genes' per-feature mean and scale (missing values
become 0, the mean), then each class's margin is ``coef_k . z + intercept_k``. Everything
is stored as numbers in ``model.json``: no pickle, nothing but JSON needed to read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from metadask.dataset.schema import LABELS
from metadask.models.base import MetaModel
from metadask.models.calibration import Calibrator


def standardise(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(x - mean) / scale`` in float64, with missing values (NaN) set to 0."""
    z = (np.asarray(x, dtype=np.float64) - mean) / scale
    z[np.isnan(z)] = 0.0
    return z


class LinearModel(MetaModel):
    """Per class: coefficients on standardised features and an intercept.

    Parameters
    ----------
    coef : array (3, n_features)
        One row of coefficients per class (neither, donor, acceptor), in standardised units.
    intercept : array (3,)
        One intercept per class.
    mean, scale : array (n_features,)
        The standardisation fitted on the training genes (``scale`` 1 for constant features).
    features : sequence of str
        Feature names, in column order.
    """

    kind = "incremental"

    def __init__(
        self,
        coef: np.ndarray,
        intercept: np.ndarray,
        mean: np.ndarray,
        scale: np.ndarray,
        features: Sequence[str],
        calibrators: Sequence[Calibrator] | None = None,
    ):
        super().__init__(features, calibrators)
        n = len(self.features)
        self.coef = np.asarray(coef, dtype=np.float64).reshape(len(LABELS), n)
        self.intercept = np.asarray(intercept, dtype=np.float64).reshape(len(LABELS))
        self.mean = np.asarray(mean, dtype=np.float64).reshape(n)
        self.scale = np.asarray(scale, dtype=np.float64).reshape(n)
        if not (np.isfinite(self.coef).all() and np.isfinite(self.intercept).all()):
            raise ValueError("LinearModel coefficients must be finite")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.scale).all() and (self.scale > 0).all()):
            raise ValueError("LinearModel standardisation needs finite means and positive scales")

    def standardised(self, x: np.ndarray) -> np.ndarray:
        return standardise(x, self.mean, self.scale)

    def predict_margin(self, x: np.ndarray) -> np.ndarray:
        return self.standardised(x) @ self.coef.T + self.intercept

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """``coef_k,j * z_j`` per feature plus the intercept as bias: exactly additive."""
        z = self.standardised(x)
        out = np.empty((len(z), len(LABELS), len(self.features) + 1), dtype=np.float64)
        out[:, :, :-1] = z[:, None, :] * self.coef[None, :, :]
        out[:, :, -1] = self.intercept[None, :]
        return out

    def importance(self) -> pd.DataFrame:
        """``gain`` = |coefficient| (standardised units), ``weight`` = 1 if used, ``cover`` = 0."""
        rows = []
        for k, c in enumerate(LABELS):
            for j, f in enumerate(self.features):
                w = float(self.coef[k, j])
                rows.append({"cls": c, "feature": f, "gain": abs(w), "weight": float(w != 0.0), "cover": 0.0})
        return pd.DataFrame(rows)

    def describe(self) -> str:
        used = int((self.coef != 0).any(axis=0).sum())
        return (f"{self.kind} model: 3 one-vs-rest logistic models on standardised features "
                f"({used} of {len(self.features)} features with a non-zero coefficient)")

    def to_files(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        # JSON floats round-trip float64 exactly (repr), so a reloaded model predicts identically
        return {}, {
            "linear": {
                "classes": list(LABELS),
                "coef": self.coef.tolist(),
                "intercept": self.intercept.tolist(),
                "mean": self.mean.tolist(),
                "scale": self.scale.tolist(),
                "margin": "margin_k = sum_j coef[k][j] * z_j + intercept[k]; z_j = (x_j - mean[j]) / scale[j], missing -> 0",
            }
        }

    @classmethod
    def from_files(cls, files: dict[str, bytes], settings: dict[str, Any], features: Sequence[str]) -> LinearModel:
        s = settings["linear"]
        if list(s.get("classes", LABELS)) != list(LABELS):
            raise ValueError(f"class order {s.get('classes')} differs from {list(LABELS)}")
        return cls(np.array(s["coef"]), np.array(s["intercept"]), np.array(s["mean"]), np.array(s["scale"]), features)
