"""How many threads a model may use inside a Dask task (XGBoost's nthread, OpenMP).

Shared by strategies (fits, ensemble weighting) and analysis (SHAP, permutation importance):
an XGBoost call with more threads than the worker has, under contention, spins in libgomp and
runs many times slower (ARCHITECTURE.md, known hazards).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


def worker_threads(default: int = 1) -> int:
    """Threads of the worker running this task (XGBoost's nthread follows it); ``default`` off a worker."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return default


FIT_RESOURCE = "metadask-fit"
"""Dask worker resource: how many fit tasks a worker runs at once (the plan's concurrency rule)."""


def fit_threads(default: int = 1) -> int:
    """XGBoost threads of a fit task: the worker's threads shared among the fits it runs at once.

    A worker given ``n`` :data:`FIT_RESOURCE` slots by the plan runs at most ``n`` fits at a
    time, each with ``threads // n`` threads, so the fits together never use more threads than
    the worker has. Without the resource (strategies without the rule, off the plan) this is
    :func:`worker_threads`.
    """
    try:
        from distributed import get_worker

        worker = get_worker()
        threads = int(worker.state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return default
    slots = int(worker.state.total_resources.get(FIT_RESOURCE, 0) or 0)
    return max(1, threads // slots) if slots > 0 else threads


@contextlib.contextmanager
def limit_threads() -> Iterator[None]:
    """Limit OpenMP and XGBoost to this worker's threads: no oversubscription under contention.

    Boosters rebuilt from bytes (as every strategy returns them) have ``nthread`` 0 and follow
    these limits; a booster that carries an explicit ``nthread`` keeps it.
    """
    import xgboost as xgb
    from threadpoolctl import threadpool_limits

    n = worker_threads()
    with threadpool_limits(limits=n, user_api="openmp"), xgb.config_context(nthread=n):
        yield
