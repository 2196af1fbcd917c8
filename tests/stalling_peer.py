"""`hearsay run` with a deliberately stallable event loop: fault injection for tests and
benchmarks only, so the daemon that ships has no such hook.

Run it in place of the CLI (``python -m tests.stalling_peer run ...``, or
``PeerProcess(module=STALLING_PEER)``). With ``HEARSAY_DEBUG_LOOP_STALL=STALL@EVERY``
in its environment, SIGUSR1 toggles blocking the whole event loop for STALL seconds
every EVERY seconds. This is how the no-false-positive membership benchmark makes one
peer slow without killing it: every other peer's detector must suspect it at most,
never bury it. A signal needs the peer's own user, so nobody on the network can do it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

from peer.runtime import node as node_module
from peer.tools.cli import main

STALL_ENV = "HEARSAY_DEBUG_LOOP_STALL"
STALLING_PEER = "tests.stalling_peer"  # the module to run instead of peer.tools.cli
log = logging.getLogger("peer.runtime.node")


def parse_loop_stall(value: str) -> tuple[float, float]:
    """``"STALL[@EVERY]"`` in seconds -> (stall, every); ``ValueError`` with a one-line reason."""
    stall_s, _, every_s = value.partition("@")
    try:
        stall, every = float(stall_s), float(every_s or "1.0")
    except ValueError:
        raise ValueError(f"{STALL_ENV}: {value!r} is not STALL[@EVERY] in seconds") from None
    if not (0 < stall <= 10 and 0 < every <= 3600):
        raise ValueError(f"{STALL_ENV}: want 0 < STALL <= 10 and 0 < EVERY <= 3600")
    return stall, every


async def _stall_loop(stall: float, every: float, stopping: asyncio.Event) -> None:
    """Block the whole event loop for ``stall`` s every ``every`` s (a deliberately slow peer)."""
    while not stopping.is_set():
        try:
            await asyncio.wait_for(stopping.wait(), timeout=every)
            return
        except TimeoutError:
            pass
        time.sleep(stall)  # on purpose: a blocking call on the loop is the fault being simulated


class StallingNode(node_module.Node):
    """A ``Node`` whose event loop SIGUSR1 stalls and unstalls."""

    _stall: asyncio.Task[None] | None = None

    def toggle_loop_stall(self, stall: float, every: float) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
            log.warning("debug loop stall off")
            return
        self._stall = asyncio.create_task(_stall_loop(stall, every, self.stopping))
        log.warning("debug loop stall on: %.3f s every %.3f s", stall, every)

    async def serve(self) -> None:
        setting = os.environ.get(STALL_ENV)
        if setting:
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self.toggle_loop_stall,
                                                          *parse_loop_stall(setting))
        await super().serve()

    async def stop(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
        await super().stop()


if __name__ == "__main__":
    if os.environ.get(STALL_ENV):
        try:
            parse_loop_stall(os.environ[STALL_ENV])
        except ValueError as e:
            print(f"hearsay: error: {e}", file=sys.stderr)
            sys.exit(2)
    node_module.Node = StallingNode  # type: ignore[misc] - `run` builds the module's Node
    sys.exit(main())
