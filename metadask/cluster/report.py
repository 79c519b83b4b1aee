"""Dask's HTML performance report of a whole run (``--performance-report``)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from distributed import Client

from metadask.cluster.probe import import_error
from metadask.errors import ClusterError

log = logging.getLogger("metadask.cluster")


@contextlib.contextmanager
def collect_performance_report(client: Client, filename: str | os.PathLike[str]) -> Iterator[None]:
    """Write Dask's HTML performance report of everything run inside the block to ``filename``.

    Written also when the block fails (useful for diagnosis); a failure to write the report
    then is logged rather than hiding the original error.
    """
    from distributed import performance_report as dask_performance_report

    path = os.fspath(filename)
    # the scheduler renders the report with bokeh: fail now, not when a long run ends
    missing = client.run_on_scheduler(import_error, "bokeh")
    if missing:
        raise ClusterError(
            f"--performance-report needs bokeh on the Dask scheduler ({client.scheduler.address}: {missing}). "
            "Install it there (pip install 'bokeh>=3.1'; the deploy/kubernetes image has it) or drop --performance-report."
        )
    if "://" not in path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    report = dask_performance_report(filename=path)
    with client.as_current():
        report.__enter__()
        try:
            yield
        except BaseException:
            try:
                report.__exit__(None, None, None)
            except Exception as exc:  # noqa: BLE001 - keep the original error
                log.warning("Could not write the performance report %s: %s", path, exc)
            raise
        report.__exit__(None, None, None)
    log.info("Wrote Dask performance report %s", path)
