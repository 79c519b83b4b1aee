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
