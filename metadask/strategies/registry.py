"""Strategy registry: built-ins, ``register_strategy`` and the ``metadask.strategies`` entry points."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from metadask.errors import ConfigError
from metadask.strategies.base import Strategy

_BUILTIN = {
    "single": "metadask.strategies.single:SingleStrategy",
    "batch-ensemble": "metadask.strategies.batch_ensemble:BatchEnsembleStrategy",
    "distributed": "metadask.strategies.distributed:DistributedStrategy",
    "incremental": "metadask.strategies.incremental:IncrementalStrategy",
}
_REGISTERED: dict[str, type[Strategy]] = {}
ENTRY_POINT_GROUP = "metadask.strategies"


def register_strategy(cls: type[Strategy], name: str | None = None) -> type[Strategy]:
    """Register a strategy class (usable as a decorator). Its ``name`` selects it."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise TypeError("register_strategy expects a Strategy subclass")
    _REGISTERED[name or cls.name] = cls
    return cls


def _entry_points() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def strategy_names() -> list[str]:
    """Every selectable strategy name (built-in, registered, entry points)."""
    names = [n for n in _BUILTIN if _available(n)]
    return names + sorted(set(_REGISTERED) | set(_entry_points()) - set(names))


def _available(name: str) -> bool:
    module = _BUILTIN[name].split(":")[0]
    return importlib.util.find_spec(module) is not None


def get_strategy(name: str) -> type[Strategy]:
    """The strategy class called ``name``; unknown names list the known ones."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _BUILTIN and _available(name):
        module, attr = _BUILTIN[name].split(":")
        return getattr(importlib.import_module(module), attr)
    eps = _entry_points()
    if name in eps:
        cls = eps[name].load()  # type: ignore[attr-defined]
        return register_strategy(cls, name)
    raise ConfigError(f"Unknown strategy '{name}'. Known strategies: auto, {', '.join(strategy_names())}.")
