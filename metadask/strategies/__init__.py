"""Training strategies: a small base class and a registry (see :mod:`.registry`)."""

from metadask.strategies.base import Strategy, TrainContext
from metadask.strategies.registry import get_strategy, register_strategy, strategy_names

__all__ = ["Strategy", "TrainContext", "get_strategy", "register_strategy", "strategy_names"]
