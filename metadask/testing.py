"""Test helpers shipped with metadask: synthetic datasets and real-data locations.

Third-party strategies can use these (and :func:`check_strategy`, once strategies are
registered) in their own test suites.
"""

from __future__ import annotations

import os
from pathlib import Path

from metadask.dataset.synthetic import make_dataset

__all__ = ["make_dataset", "real_data_path"]


def real_data_path(name: str = "real_fly_3mer") -> Path | None:
    """Where the shared real fly dataset lives (``METADASK_REAL_DATA`` or ``../shared/data``)."""
    root = os.environ.get("METADASK_REAL_DATA")
    candidates = [Path(root)] if root else []
    here = Path(__file__).resolve().parents[1]
    candidates += [here.parent / "shared" / "data", here / ".." / "shared" / "data"]
    for base in candidates:
        p = base / name
        if (p / "master").is_dir():
            return p
    return None
