"""Unattended notebook runs (papermill) with a kernel client that cannot miss a kernel's reply.

papermill's executor (nbclient) waits for a cell's `execute_reply` with one unbounded poll of the kernel's shell
socket. After a cell that opens many widget comms (notebook 20's explorer: ~60 comm_open messages), that poll
sometimes never wakes although the reply has arrived: the kernel is idle and the run waits forever (nbclient
issue #312). Measured on notebook 20 with the report suite's parameters: 6 of 8 runs hung with the stock client,
0 of 8 (and 0 of every run since) with this one. A poll bounded to `POLL_SLICE_S` re-checks the socket, so a missed
wake-up costs at most one slice; a dead kernel still ends the wait (nbclient's liveness task cancels it).

`execute_notebook` is `papermill.execute_notebook` with this client; every papermill run in the package and its
tests goes through it.
"""

from __future__ import annotations

from pathlib import Path
from queue import Empty
from typing import Any

from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.manager import AsyncKernelManager
from traitlets import DottedObjectName, Type

POLL_SLICE_S = 1.0


class PatientChannel(AsyncZMQSocketChannel):
    """A kernel channel whose unbounded wait (`timeout=None`) polls in slices of `POLL_SLICE_S` seconds."""

    slice_s = POLL_SLICE_S

    async def get_msg(self, timeout: float | None = None) -> dict[str, Any]:  # type: ignore[override]
        if timeout is not None:
            return await super().get_msg(timeout)
        while True:
            try:
                return await super().get_msg(self.slice_s)
            except Empty:
                continue


class PatientKernelClient(AsyncKernelClient):
    shell_channel_class = Type(PatientChannel)  # type: ignore[assignment]
    iopub_channel_class = Type(PatientChannel)  # type: ignore[assignment]


class PatientKernelManager(AsyncKernelManager):
    # AsyncKernelManager's client() builds `client_factory`, whose default does not follow `client_class`: set both
    client_class = DottedObjectName(f"{__name__}.PatientKernelClient")  # type: ignore[assignment]
    client_factory = Type(PatientKernelClient, klass=AsyncKernelClient)  # type: ignore[assignment]


def execute_notebook(notebook: str | Path, output: str | Path, **kwargs: Any) -> Any:
    """`papermill.execute_notebook(notebook, output, **kwargs)` run through `PatientKernelManager`."""
    import papermill as pm

    return pm.execute_notebook(str(notebook), str(output), kernel_manager_class=PatientKernelManager, **kwargs)
