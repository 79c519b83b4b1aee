"""A batch ensemble: one group of three one-vs-rest boosters per gene batch, combined by weights.

Members are combined by weighted soft voting **in margin space**: for class ``k`` the
ensemble margin is ``sum_j w_jk * margin_jk`` with ``sum_j w_jk = 1``. Because every step is
linear, each member's TreeSHAP contributions combine the same way, so the ensemble's
contributions stay additive (contributions + bias = ensemble margin).

Bundle layout: ``members/<i>/<class>.ubj`` (XGBoost UBJSON) and, in ``model.json``, the
member file names, the ``weights`` (members x classes, plain numbers) and the combination
method. Nothing else is needed to rebuild the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from metadask.dataset.schema import LABELS
from metadask.models.base import MetaModel
from metadask.models.boosted import FitOutput, booster_from_bytes, booster_importance, booster_margins, booster_to_bytes
from metadask.models.calibration import Calibrator

METHODS = ("voting", "weighted")
_MIN_LOSS = 1e-6


def member_weight(fit: FitOutput, method: str) -> float:
    """Unnormalised weight of one member fit: 1 (``voting``) or 1 / validation logloss (``weighted``).

    The validation logloss is read at the fit's best iteration (held-out genes of the member's
    own batch). A fit without a validation history falls back to weight 1.
    """
    if method == "voting":
        return 1.0
    valid = (fit.history or {}).get("valid") or []
    if not valid:
        return 1.0
    loss = float(valid[min(int(fit.best_iteration), len(valid) - 1)])
    return 1.0 / max(loss, _MIN_LOSS)


def normalise_weights(raw: np.ndarray) -> np.ndarray:
    """Scale each class's column of a (members x classes) array to sum to 1."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[0] == 0 or raw.shape[1] != len(LABELS):
        raise ValueError(f"ensemble weights must be (members x {len(LABELS)}), found shape {raw.shape}")
    if not np.isfinite(raw).all() or (raw < 0).any():
        raise ValueError("ensemble weights must be finite and non-negative")
    total = raw.sum(axis=0, keepdims=True)
    if (total <= 0).any():
        raise ValueError("every class needs a positive ensemble weight")
    return raw / total


def fit_weights(fits: Sequence[Sequence[FitOutput]], method: str) -> np.ndarray:
    """Normalised weights (members x classes) for member fits given as ``fits[member][class]``."""
    if method not in METHODS:
        raise ValueError(f"unknown ensemble method {method!r} (known: {', '.join(METHODS)})")
    return normalise_weights(np.array([[member_weight(f, method) for f in member] for member in fits]))


def combine_margins(member_margins: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted margins: ``member_margins`` (members, n, classes), ``weights`` (members, classes)."""
    w = normalise_weights(weights)
    return np.einsum("jnk,jk->nk", np.asarray(member_margins, dtype=np.float64), w)


def member_margins(members: Sequence[Sequence[xgb.Booster]], x: np.ndarray, nthread: int | None = None,
                   device: str | None = None) -> np.ndarray:
    """Margins of every member for matrix ``x``: (members, n, classes).

    Each member goes through :func:`~metadask.models.boosted.booster_margins` (``inplace_predict``
    on the float32 matrix, no DMatrix copy), the one prediction path of every model.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty((len(members), x.shape[0], len(LABELS)), dtype=np.float64)
    for j, group in enumerate(members):
        out[j] = booster_margins(group, x, nthread=nthread, device=device)
    return out


class EnsembleModel(MetaModel):
    """Members (one per gene batch) of three one-vs-rest boosters, combined by weights.

    Parameters
    ----------
    members
        ``members[j][k]``: the booster of member ``j`` for class ``k`` (class-code order).
    weights
        (members x classes) non-negative weights; each class's column is normalised to sum to 1.
    features
        Feature names in model order.
    method
        How the weights were obtained: ``voting`` (equal) or ``weighted`` (validation performance).
    """

    kind = "batch-ensemble"

    def __init__(
        self,
        members: Sequence[Sequence[xgb.Booster]],
        weights: np.ndarray | Sequence[Sequence[float]],
        features: Sequence[str],
        *,
        method: str = "weighted",
        calibrators: Sequence[Calibrator] | None = None,
    ):
        super().__init__(features, calibrators)
        if not members or any(len(m) != len(LABELS) for m in members):
            raise ValueError(f"an ensemble needs at least one member of {len(LABELS)} boosters (one per class)")
        self.members = [list(m) for m in members]
        self.weights = normalise_weights(np.asarray(weights, dtype=np.float64))
        if self.weights.shape[0] != len(self.members):
            raise ValueError(f"{self.weights.shape[0]} weight rows for {len(self.members)} members")
        if method not in METHODS:
            raise ValueError(f"unknown ensemble method {method!r} (known: {', '.join(METHODS)})")
        self.method = method

    @property
    def n_members(self) -> int:
        return len(self.members)

    # -- predictions -------------------------------------------------------------------------
    def member_margins(self, x: np.ndarray) -> np.ndarray:
        """Every member's margins for ``x``: (members, n, classes)."""
        return member_margins(self.members, x)

    def predict_margin(self, x: np.ndarray, *, members: Sequence[int] | None = None) -> np.ndarray:
        """Weighted margins (n x 3); ``members`` restricts the vote (weights renormalised)."""
        use = list(range(self.n_members)) if members is None else list(members)
        mm = member_margins([self.members[j] for j in use], x, nthread=getattr(self, "nthread", None),
                            device=getattr(self, "device", None))
        return combine_margins(mm, self.weights[use])

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Weighted TreeSHAP contributions (n, 3, features + 1): they sum to the ensemble margin."""
        dm = xgb.DMatrix(np.ascontiguousarray(x, dtype=np.float32))
        out = np.zeros((dm.num_row(), len(LABELS), len(self.features) + 1), dtype=np.float64)
        for j, group in enumerate(self.members):
            for k, b in enumerate(group):
                if getattr(self, "device", None):
                    b.set_param({"device": self.device})
                out[:, k, :] += self.weights[j, k] * b.predict(dm, pred_contribs=True)
        return out

    def importance(self) -> pd.DataFrame:
        """Weighted mean over members of gain / weight / cover, per class and feature."""
        total: pd.DataFrame | None = None
        for j, group in enumerate(self.members):
            imp = booster_importance(group, self.features)
            w = imp["cls"].map({c: self.weights[j, k] for k, c in enumerate(LABELS)}).to_numpy()
            scaled = imp[["gain", "weight", "cover"]].mul(w, axis=0)
            total = scaled if total is None else total + scaled
        assert total is not None
        return pd.concat([imp[["cls", "feature"]], total], axis=1)

    def describe(self) -> str:
        genes = self.info.get("genes")
        gene_text = f", {genes:,} genes" if isinstance(genes, int) else ""
        per = "the CV fold models" if self.info.get("final_model") == "cv-ensemble" else "one per gene batch"
        return (
            f"{self.kind}: {self.n_members} members ({per}){gene_text}, {self.method} combination "
            f"of member margins, {len(self.features)} features"
        )

    # -- bundle ----------------------------------------------------------------------------
    def to_files(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        files: dict[str, bytes] = {}
        names = []
        for j, group in enumerate(self.members):
            row = []
            for c, b in zip(LABELS, group):
                name = f"members/{j}/{c}.ubj"
                files[name] = booster_to_bytes(b)
                row.append(name)
            names.append(row)
        settings = {
            "members": names, "weights": self.weights.tolist(), "method": self.method,
            "combination": "margin_k = sum_j weights[j][k] * margin_jk",
        }
        return files, settings

    @classmethod
    def from_files(cls, files: dict[str, bytes], settings: dict[str, Any], features: Sequence[str]) -> EnsembleModel:
        names = settings["members"]
        if not isinstance(names, list) or not all(isinstance(r, list) and len(r) == len(LABELS) for r in names):
            raise ValueError("'members' must list one booster file per class for each member")
        members = [[booster_from_bytes(files[n]) for n in row] for row in names]
        return cls(members, np.asarray(settings["weights"], dtype=np.float64), features, method=str(settings["method"]))
