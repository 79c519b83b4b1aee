"""Decision thresholds: how a model's probabilities become a call (neither / donor / acceptor).

A position is called a splice site when its splice score ``p_donor + p_acceptor`` reaches the
``splice`` threshold; a called site is a donor or an acceptor by the larger of the two. The
same rule is used for the binary splice-vs-neither F1 of every evaluation, for the ``call``
column of ``metadask predict`` and for the base model (with its own scores).

Thresholds live in the model bundle's manifest (``"thresholds"``), chosen by training on
out-of-fold scores of the distribution users scan (every gene-body position, or sampled
rows reweighted to it); a bundle without them uses :data:`DEFAULT_THRESHOLDS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from metadask.errors import ConfigError

DEFAULT_THRESHOLDS: dict[str, Any] = {"splice": 0.5, "source": "default (0.5: no threshold was chosen in training)"}


def check_thresholds(thresholds: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a thresholds mapping; return it as a plain dict."""
    t = dict(thresholds)
    value = t.get("splice")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 < float(value) <= 1.0:
        raise ConfigError(f"The splice threshold must be a number in (0, 1] (found {value!r}). Use e.g. --threshold 0.5.")
    t["splice"] = float(value)
    return t


def splice_score(proba: np.ndarray) -> np.ndarray:
    """``p_donor + p_acceptor`` per row of an (n, 3) probability array (class-code order)."""
    proba = np.asarray(proba)
    return proba[:, 1] + proba[:, 2]


def call_codes(proba: np.ndarray, threshold: float) -> np.ndarray:
    """Class codes (0 neither, 1 donor, 2 acceptor) of the calls at a splice threshold."""
    proba = np.asarray(proba)
    site = splice_score(proba) >= threshold
    kind = np.where(proba[:, 2] > proba[:, 1], 2, 1)
    return np.where(site, kind, 0).astype(np.int8)
