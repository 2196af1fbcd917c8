"""A lone MqttDiscovery in its own process, for tests that SIGKILL it.

Only a real process death makes the broker see a connection end without DISCONNECT
and publish the last will, so the last-will test cannot run in the test's own process.
It runs under uvloop, as the daemon does, which also checks aiomqtt on that loop.

Usage: python tests/mqtt_discovery_child.py BROKER CLUSTER PEER_ID ADDRESS
Prints one JSON line ``{"event": "announced", ...}`` once its own announcement has come
back from the broker, then runs until killed (SIGTERM stops it gracefully).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peer.discovery.mqtt import MqttDiscovery  # noqa: E402


async def main(broker: str, cluster: str, peer_id: str, address: str) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    discovery = MqttDiscovery(broker, cluster, peer_id, address, on_peer=lambda *_: None)
    task = asyncio.create_task(discovery.run(stopping))
    while not discovery.announced and not task.done():
        await asyncio.sleep(0.02)  # polled by the parent with its own deadline
    print(json.dumps({"event": "announced", "peer_id": peer_id, "loop": type(loop).__module__}), flush=True)
    await task


if __name__ == "__main__":
    try:
        import uvloop
        run = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency of the daemon
        run = asyncio.run
    run(main(*sys.argv[1:5]))
