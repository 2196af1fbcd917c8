"""Real peers that know only an MQTT broker (a real Mosquitto) find each other, keep going
without it, come back to it after a restart, and shut down cleanly afterwards."""

from __future__ import annotations

import asyncio
import signal

from peer.tools.procs import wait_for
from tests.mqtt_broker import MosquittoBroker, mqtt_broker  # noqa: F401 - the fixture
from tests.peer.test_mqtt_discovery import CLUSTER, retained_peers

# What asyncio logs when a failure was left unread behind the daemon's back (issue 15 saw
# "Future exception was never retrieved ... MqttCodeError [code:128]" at shutdown).
LOOP_ERRORS = ("Future exception was never retrieved", "Task exception was never retrieved", "MqttCodeError")


def test_peers_find_each_other_through_the_broker_and_survive_its_loss(launch, mqtt_broker: MosquittoBroker) -> None:
    peers = launch(3, lambda i, seeds: ["--mqtt-broker", f"{mqtt_broker.host}:{mqtt_broker.port}",
                                        "--cluster", CLUSTER, "--gossip-interval", "0.3", "--seed", str(i)])
    wait_for(lambda: all(p.status().known_peers == 2 and p.status().merges >= 2 for p in peers), timeout=60,
             what="the peers to find each other through the broker")
    assert set(asyncio.run(retained_peers(mqtt_broker))) == {"peer-0", "peer-1", "peer-2"}

    peers[2].signal(signal.SIGKILL)  # its last will clears its announcement
    wait_for(lambda: set(asyncio.run(retained_peers(mqtt_broker))) == {"peer-0", "peer-1"}, timeout=30,
             what="the killed peer's announcement to disappear")

    mqtt_broker.stop()
    before = [p.status().merges for p in peers[:2]]
    wait_for(lambda: all(p.status().merges >= b + 3 for p, b in zip(peers[:2], before)), timeout=30,
             what="gossip to continue without the broker")
    assert all(p.alive() for p in peers[:2])

    # The broker comes back without its retained messages: both peers announce again...
    mqtt_broker.start()
    wait_for(lambda: set(asyncio.run(retained_peers(mqtt_broker))) == {"peer-0", "peer-1"}, timeout=30,
             what="the survivors to announce themselves on the restarted broker")
    # ...and stopping them afterwards is clean: exit 0, nothing left failing on the loop.
    for p in peers[:2]:
        assert p.stop(timeout=30) == 0, p.log_tail()
        log = p.log_path.read_text(errors="replace")
        assert not [e for e in LOOP_ERRORS if e in log], p.log_tail(40)
