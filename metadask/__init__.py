"""metadask: gene-grouped splice-site meta-models trained out of core on Dask.

Public API::

    import metadask
    result = metadask.train("data/train_pc_1000_3mers", "runs/r1", n_folds=5)
    model = metadask.load_model("runs/r1/model")
    proba = model.predict_proba(frame)
    metrics = metadask.evaluate("runs/r1/model", "data/fullbody", "runs/r1_eval")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from metadask._version import __version__

__all__ = [
    "Strategy", "TrainConfig", "TrainingResult", "__version__", "evaluate", "load_model", "open_dataset",
    "predict_dataset", "register_strategy", "train",
]

_LAZY = {
    "train": "metadask.training",
    "evaluate": "metadask.evaluation",
    "TrainConfig": "metadask.config",
    "TrainingResult": "metadask.results",
    "load_model": "metadask.models.bundle",
    "predict_dataset": "metadask.inference",
    "open_dataset": "metadask.dataset.source",
    "register_strategy": "metadask.strategies.registry",
    "Strategy": "metadask.strategies.base",
}

if TYPE_CHECKING:  # pragma: no cover
    from metadask.config import TrainConfig
    from metadask.dataset.source import open_dataset
    from metadask.evaluation import evaluate
    from metadask.inference import predict_dataset
    from metadask.models.bundle import load_model
    from metadask.results import TrainingResult
    from metadask.strategies.base import Strategy
    from metadask.strategies.registry import register_strategy
    from metadask.training import train


def __getattr__(name: str) -> Any:
    # imported on first use so `import metadask` stays light on workers and in the CLI
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'metadask' has no attribute {name!r}")
