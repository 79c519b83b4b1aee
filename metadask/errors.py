"""Errors raised by metadask.

Every error is a :class:`MetadaskError`. Its message says what is wrong (naming the file,
column or option) and how to fix it. The CLI turns any of them into one line on stderr
and exit status 2; library users can catch :class:`MetadaskError`.
"""

from __future__ import annotations

from collections.abc import Iterable


class MetadaskError(Exception):
    """Base class of every error metadask raises on purpose (bad input, bad options, ...)."""

    exit_code = 2


class DatasetError(MetadaskError, ValueError):
    """The dataset cannot be used as given (path, files, schema, labels, values)."""


class ConfigError(MetadaskError, ValueError):
    """An option has a value metadask cannot use."""


class ClusterError(MetadaskError, RuntimeError):
    """The Dask cluster cannot be reached or cannot run metadask."""


class ModelError(MetadaskError, ValueError):
    """A model bundle cannot be loaded or cannot predict on the given data."""


class OutputError(MetadaskError, OSError):
    """The output directory cannot be written as asked."""


class TrainingError(MetadaskError, RuntimeError):
    """Training could not complete (for example a class is missing from a fold)."""


def option_error(name: str, constraint: str, found: object, fix: str) -> ConfigError:
    """Build the standard message for a bad option.

    >>> str(option_error("n_folds", "must be >= 2", 1, "Use --n-folds 2 or more."))
    "The 'n_folds' option must be >= 2 (found 1). Use --n-folds 2 or more."
    """
    return ConfigError(f"The '{name}' option {constraint} (found {found!r}). {fix}")


def preview(items: Iterable[object], limit: int = 8) -> str:
    """Comma-separated preview of ``items``, shortened to ``limit`` entries."""
    items = list(items)
    shown = ", ".join(str(i) for i in items[:limit])
    if len(items) > limit:
        shown += f", ... ({len(items) - limit} more)"
    return shown
