"""What a worker can import: run on the workers by ``check_workers`` and the report check.

The functions here use the standard library only and are pickled *by value*
(``cloudpickle.register_pickle_by_value``, which distributed's serializer honours), so a
worker without metadask, or with a broken install, can still run them and say so; a
function pickled by reference would fail to unpickle there instead. They read the version
of the imported module (``__version__``), not the installed metadata that
``Client.get_versions`` reports: a package whose metadata is present but which cannot be
imported, or which is shadowed by another copy, is what breaks tasks.
"""

from __future__ import annotations

import sys
from typing import Any

import cloudpickle


def worker_probe() -> dict[str, Any]:
    """Python version plus, for metadask and xgboost, the imported version or the import error."""
    import importlib
    import importlib.metadata
    import platform

    out: dict[str, Any] = {"python": platform.python_version()}
    for name in ("metadask", "xgboost"):
        try:
            module = importlib.import_module(name)
            version = getattr(module, "__version__", None) or importlib.metadata.version(name)
            out[name] = str(version)
        except BaseException as exc:  # noqa: BLE001 - a broken install may raise anything on import
            out[name] = None
            out[name + "_error"] = f"{type(exc).__name__}: {exc}"
    return out


def import_error(name: str) -> str | None:
    """Why ``name`` cannot be imported here, or None."""
    import importlib

    try:
        importlib.import_module(name)
    except BaseException as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


cloudpickle.register_pickle_by_value(sys.modules[__name__])
