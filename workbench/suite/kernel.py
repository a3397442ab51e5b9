"""One Jupyter kernel for all the notebooks of a run.

Starting a kernel and importing the workbench (pandas, scipy, plotly) costs ~3 s per notebook, and
a suite runs ten. The runner starts one kernel before the local mesh (so the two start together),
imports the package in it once, and before each notebook clears the user namespace and the
execution counter, so every notebook starts as it would in a fresh kernel. A kernel that died (or
that nbclient shut down on Ctrl-C) is replaced before the next notebook. The kernel talks over Unix
sockets: no unencrypted loopback TCP ports, no port races.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from jupyter_core.utils import run_sync

PRELOAD = "import IPython.display, workbench.experiments, workbench.report.plots  # noqa"
# silent, so the counter does not move; a new history session restarts it at 1 and clears the names
RESET = "get_ipython().reset(new_session=True)\nimport os as _os; _os.chdir({cwd!r}); del _os\n"


def ipc_kernel_manager() -> type:
    """An AsyncKernelManager whose kernels use the ipc transport."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _transport_default(self) -> str:
            return "ipc"

    return IPCKernelManager


class SuiteKernel:
    """A kernel shared by a run's notebooks: ``start()``, ``for_notebook()`` before each, ``stop()``."""

    def __init__(self, cwd: Path, startup_timeout_s: float = 60.0) -> None:
        self.cwd = Path(cwd)
        self.startup_timeout_s = startup_timeout_s
        self.km: Any = None
        self.kc: Any = None
        self._sockets: Any = None
        self.used = False

    def __enter__(self) -> SuiteKernel:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Launch the kernel and queue the imports; returns without waiting for either."""
        run_sync(self._start)()

    async def _start(self) -> None:
        # the client's sockets belong to the event loop they are made in: nbclient's (run_sync's)
        # ipc socket paths are relative to each process's cwd unless absolute: a private dir
        self._sockets = tempfile.TemporaryDirectory(prefix="workbench-kernel-")
        self.km = ipc_kernel_manager()(kernel_name="python3", ip=str(Path(self._sockets.name) / "kernel"))
        await self.km.start_kernel(cwd=str(self.cwd))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.execute(PRELOAD, silent=True, store_history=False)
        self.used = False

    def for_notebook(self) -> dict[str, Any]:
        """``km``/``kc`` for papermill, with a clean namespace (a new kernel if this one died)."""
        return run_sync(self._for_notebook)()

    async def _for_notebook(self) -> dict[str, Any]:
        if self.km is None or not await self.km.is_alive():
            await self._stop()
            await self._start()
        elif self.used:  # a notebook's client may leave replies or cancelled reads behind: a new one
            self.kc.stop_channels()
            self.kc = self.km.client()
            self.kc.start_channels()
        self.used = True
        await self.kc.wait_for_ready(timeout=self.startup_timeout_s)
        reply = await self.kc.execute_interactive(
            RESET.format(cwd=str(self.cwd)), silent=True, store_history=False, timeout=self.startup_timeout_s
        )
        if reply["content"]["status"] != "ok":
            content = reply["content"]
            raise RuntimeError(f"could not reset the kernel: {content.get('ename')}: {content.get('evalue')}")
        return {"km": self.km}  # nbclient makes its own client (it takes no kc)

    def stop(self) -> None:
        """Shut the kernel down (also when it is already gone)."""
        run_sync(self._stop)()

    async def _stop(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
            self.kc = None
        if self.km is not None:
            km, self.km = self.km, None
            try:
                if await km.is_alive():
                    await km.shutdown_kernel(now=False)
            except RuntimeError:
                pass
            finally:
                await km.cleanup_resources()
                self._sockets.cleanup()
