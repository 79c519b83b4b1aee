"""The one model interface every strategy's trained model implements.

Every model reduces to per-class one-vs-rest margins (log-odds) for the rows it is given.
Probabilities are ``combine(calibrate_k(sigmoid(margin_k)))``: each class's sigmoid is
calibrated by its own calibrator, then the three are normalised to sum to 1.
Inference needs no cluster: a model is plain boosters / numbers in memory.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from metadask.dataset.schema import LABELS, is_kmer
from metadask.errors import ModelError, preview
from metadask.models.calibration import IDENTITY, Calibrator, combine
from metadask.models.thresholds import DEFAULT_THRESHOLDS, call_codes


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function, without overflow warnings for large margins."""
    from scipy.special import expit

    return expit(np.asarray(z, dtype=np.float64))


class MetaModel(abc.ABC):
    """A trained meta-model: ``predict_proba`` / ``predict`` on pandas, NumPy or Dask data."""

    kind: str = "abstract"

    def __init__(self, features: Sequence[str], calibrators: Sequence[Calibrator] | None = None):
        self.features = list(features)
        self.calibrators = list(calibrators) if calibrators is not None else [IDENTITY] * len(LABELS)
        self.info: dict[str, Any] = {}
        # decision thresholds (see metadask.models.thresholds); set by training, saved in the bundle
        self.thresholds: dict[str, Any] = dict(DEFAULT_THRESHOLDS)
        # XGBoost threads for predictions (None: XGBoost's default, every core); a Dask worker
        # sets its own thread count so that workers sharing a machine do not oversubscribe it
        self.nthread: int | None = None
        # XGBoost device for predictions and contributions ("cuda": on the GPU; None: where the boosters are)
        self.device: str | None = None

    # -- what subclasses provide ---------------------------------------------------------
    @abc.abstractmethod
    def predict_margin(self, x: np.ndarray) -> np.ndarray:
        """One-vs-rest margins (n x 3, class-code order) for a float32 feature matrix."""

    @abc.abstractmethod
    def to_files(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        """Files (name -> bytes) and JSON settings that reconstruct the model (no pickle)."""

    @classmethod
    @abc.abstractmethod
    def from_files(cls, files: dict[str, bytes], settings: dict[str, Any], features: Sequence[str]) -> MetaModel:
        """Inverse of :meth:`to_files`."""

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Per-class feature contributions in margin space: (n, 3, n_features + 1).

        The last column is the bias; contributions + bias = margin (additive, like SHAP).
        """
        raise NotImplementedError(f"{type(self).__name__} does not provide contributions")

    def importance(self) -> pd.DataFrame:
        """Per class and feature: ``gain``, ``weight``, ``cover`` (0 for unused features).

        Columns: ``cls``, ``feature``, ``gain``, ``weight``, ``cover``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not provide importances")

    def describe(self) -> str:
        return f"{self.kind} model, {len(self.features)} features"

    # -- shared behaviour ----------------------------------------------------------------
    def matrix(self, data: Any) -> np.ndarray:
        """Turn pandas / NumPy input into the float32 matrix in the model's feature order.

        Missing k-mer columns are filled with 0; any other missing feature is an error.
        """
        if isinstance(data, pd.DataFrame):
            missing = [c for c in self.features if c not in data.columns]
            hard = [c for c in missing if not is_kmer(c)]
            if hard:
                raise ModelError(
                    f"Input lacks {len(hard)} feature columns the model was trained on: {preview(hard)}. "
                    "Predict on data with the training dataset's columns."
                )
            if missing:
                data = data.assign(**{c: 0.0 for c in missing})
            x = data[self.features].to_numpy(dtype=np.float32, na_value=np.nan)
        else:
            x = np.asarray(data, dtype=np.float32)
            if x.ndim != 2 or x.shape[1] != len(self.features):
                raise ModelError(
                    f"Input array has shape {x.shape}; the model expects {len(self.features)} feature columns "
                    "in manifest order. Pass a DataFrame with named columns instead."
                )
        return np.ascontiguousarray(x)

    def raw_proba(self, x: np.ndarray) -> np.ndarray:
        """Uncalibrated one-vs-rest probabilities (n x 3)."""
        return sigmoid(self.predict_margin(x))

    def calibrate(self, raw: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
        """Calibrated probabilities from raw ones; ``x`` (the feature matrix) feeds ``stacked`` calibrators
        the base score they read."""
        cols = []
        for k, cal in enumerate(self.calibrators):
            name = cal.base_column
            if name is None:
                cols.append(cal(raw[:, k]))
                continue
            if x is None or name not in self.features:
                raise ModelError(f"The calibrator of class {LABELS[k]} reads the base score '{name}', which the input lacks.")
            cols.append(cal(raw[:, k], np.asarray(x)[:, self.features.index(name)]))
        return combine(np.column_stack(cols))

    def predict_proba(self, data: Any) -> Any:
        """Class probabilities (neither, donor, acceptor) summing to 1 per row.

        pandas / NumPy in, NumPy out; a Dask dataframe in gives a Dask dataframe out
        (``map_partitions``) with columns ``prob_neither``, ``prob_donor``, ``prob_acceptor``.
        """
        if _is_dask(data):
            meta = pd.DataFrame({f"prob_{c}": pd.Series(dtype="float64") for c in LABELS})
            return data.map_partitions(_proba_frame, self, meta=meta)
        x = self.matrix(data)
        return self.calibrate(self.raw_proba(x), x)

    def call(self, proba: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Class codes called from probabilities at the model's splice threshold (or ``threshold``)."""
        return call_codes(proba, float(self.thresholds["splice"] if threshold is None else threshold))

    def predict(self, data: Any) -> Any:
        """Predicted class codes (0 neither, 1 donor, 2 acceptor): the argmax of the probabilities."""
        if _is_dask(data):
            return data.map_partitions(lambda df: pd.Series(self.predict_proba(df).argmax(axis=1), index=df.index), meta=("predicted_class", "int64"))
        return self.predict_proba(data).argmax(axis=1)


def _is_dask(data: Any) -> bool:
    return type(data).__module__.startswith("dask")


def _proba_frame(df: pd.DataFrame, model: MetaModel) -> pd.DataFrame:
    p = model.predict_proba(df)
    return pd.DataFrame(p, columns=[f"prob_{c}" for c in LABELS], index=df.index)
