"""A remote scheduler (``--scheduler``, ``DASK_SCHEDULER_ADDRESS``): a bounded handshake, then a client."""

from __future__ import annotations

import asyncio
import concurrent.futures

from distributed import Client

from metadask.errors import ClusterError


def _handshake(address: str, timeout: float) -> None:
    """Open and close one comm to ``address``, the Dask handshake included, within ``timeout``.

    ``Client(address, timeout=...)`` bounds the TCP connect but not the handshake read, so a
    port that accepts connections and never answers (a wrong service, a dead port-forward)
    would hang it forever. This pre-flight bounds the whole exchange. It runs its own event
    loop in a helper thread so it also works where a loop is already running (Jupyter).
    """
    from distributed.comm import connect as comm_connect
    from distributed.security import Security

    async def go() -> None:
        comm = await asyncio.wait_for(
            comm_connect(address, timeout=timeout, **Security().get_connection_args("client")), timeout
        )
        await comm.close()

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="metadask-handshake") as pool:
        pool.submit(asyncio.run, go()).result()


def connect_remote(address: str, timeout: float) -> Client:
    def unreachable(reason: str) -> ClusterError:
        return ClusterError(
            f"Cannot reach the Dask scheduler at {address} within {timeout:g} s ({reason}). "
            "Check the address and that the scheduler is running, or omit --scheduler "
            "(and DASK_SCHEDULER_ADDRESS) to use a local cluster."
        )

    try:
        _handshake(address, timeout)
    except ValueError as exc:  # unknown scheme, malformed address
        raise ClusterError(
            f"'{address}' is not a Dask scheduler address ({exc}). Use e.g. --scheduler tcp://host:8786."
        ) from None
    except (OSError, TimeoutError, asyncio.TimeoutError) as exc:
        raise unreachable(f"{type(exc).__name__}: {exc}" if str(exc) else "no answer") from None
    except Exception as exc:  # noqa: BLE001 - something answered, but not a Dask scheduler
        raise unreachable(f"the service there does not speak the Dask protocol: {type(exc).__name__}") from None
    try:
        return Client(address, timeout=f"{timeout}s", set_as_default=True)
    except (OSError, TimeoutError) as exc:
        raise unreachable(type(exc).__name__) from None
