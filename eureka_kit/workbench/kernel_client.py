"""Unattended notebook runs (papermill) with a kernel client that cannot miss a kernel's reply.

papermill's executor (nbclient) waits for a cell's `execute_reply` with one poll of the kernel's shell socket
(unbounded, or as long as the cell's `execution_timeout`). After a cell that opens many widget comms (notebook 20's
explorer: ~60 comm_open messages), that poll sometimes never wakes although the reply has arrived: the kernel has
run the cell and is idle, and the run waits forever (nbclient issue #312). Measured on notebook 20 with the report
suite's parameters: 6 of 8 runs hung with the stock client, 0 of 8 with polls sliced to `POLL_SLICE_S` (a missed
wake-up then costs at most one slice). A first version sliced only the unbounded wait; `make report`, which gives
every cell a timeout, hung again in notebook 20 inside one 900 s poll, so every wait is sliced now. A dead kernel
still ends the wait (nbclient's liveness task cancels it).

`execute_notebook` is `papermill.execute_notebook` with this client; every papermill run in the package and its
tests goes through it.
"""

from __future__ import annotations

import time
from pathlib import Path
from queue import Empty
from typing import Any

from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.manager import AsyncKernelManager
from traitlets import DottedObjectName, Type

POLL_SLICE_S = 1.0


class PatientChannel(AsyncZMQSocketChannel):
    """A kernel channel whose waits poll in slices of at most `POLL_SLICE_S` seconds, up to the caller's timeout
    (None: no limit). nbclient waits without a limit, or up to a cell's whole `execution_timeout` when one is set:
    both are one poll in the stock channel."""

    slice_s = POLL_SLICE_S

    async def get_msg(self, timeout: float | None = None) -> dict[str, Any]:  # type: ignore[override]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = self.slice_s if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await super().get_msg(min(self.slice_s, left))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise


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
