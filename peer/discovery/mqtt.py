"""Peer discovery through an MQTT broker (aiomqtt): retained announcements with a last will.

Every peer keeps one *retained* message on ``hearsay/<cluster>/peers/<peer_id>`` that says
where its gossip server listens, and registers a *last will* on the same topic with an
empty retained payload. An empty retained publish is how MQTT deletes a retained
message, so when a peer dies without saying goodbye (SIGKILL, lost link) the broker
itself erases its announcement; a graceful stop erases it explicitly. Every peer
subscribes to ``hearsay/<cluster>/peers/+``: the broker first replays the retained
announcements of everyone present, then forwards new ones and deletions as they happen.

Discovery is only a way *in*: once peers know each other, membership (SWIM) is the
authority on who is alive. That is why this module never lets the broker disturb a
formed swarm: the connection is retried forever in the background with capped,
jittered exponential backoff, nothing is raised into the daemon, and a broker outage
does not produce ``on_gone`` calls (a missing announcement after a broker restart
says nothing about the peer). After every (re)connection the peer announces itself
again, because a broker without persistence forgets retained messages on restart.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiomqtt

from peer.discovery.announcements import (DEFAULT_BROKER_PORT, DEFAULT_TLS_BROKER_PORT, TOPIC_ROOT, Announcement,
                                          AnnouncementError, backoff_delays, check_topic_level, decode_announcement,
                                          peers_filter, peers_topic, split_host_port)

log = logging.getLogger(__name__)
# paho's own messages (chatty at DEBUG), under our name so the daemon's logging can tune them.
_PAHO_LOG = logging.getLogger(__name__ + ".paho")


@dataclass(frozen=True)
class BrokerTls:
    """TLS to the broker: the broker is verified against ``ca`` (the system's CAs when empty),
    and ``cert``/``key`` are presented when the broker asks for a client certificate."""

    ca: str = ""
    cert: str = ""
    key: str = ""

    def params(self) -> aiomqtt.TLSParameters:
        return aiomqtt.TLSParameters(ca_certs=self.ca or None, certfile=self.cert or None,
                                     keyfile=self.key or None)


# --- the discovery task --------------------------------------------------------------------------

class MqttDiscovery:
    """Announce this peer on an MQTT broker and report the others; see the module docstring.

    ``on_peer(peer_id, address)`` is called when a peer is first seen, and again when it
    announces a different address or was restarted (new instance). ``on_gone(peer_id)``
    is called when a peer's announcement is deleted (graceful stop or last will) and
    stays deleted for ``gone_grace`` seconds while we remain connected.
    Both run on the event loop and should be quick; an exception in them is logged
    and ignored. Neither is ever called for this peer itself.
    """

    def __init__(
        self,
        broker: str,
        cluster: str,
        peer_id: str,
        address: str,
        on_peer: Callable[[str, str], None],
        on_gone: Callable[[str], None] | None = None,
        *,
        keepalive: float = 5.0,
        reconnect_min: float = 0.25,
        reconnect_max: float = 10.0,
        op_timeout: float = 5.0,
        gone_grace: float = 1.0,
        rng: random.Random | None = None,
        credentials: tuple[str, str | None] | None = None,
        tls: BrokerTls | None = None,
    ) -> None:
        # Configuration errors are raised here, at construction, where the daemon can
        # report them; once run() is going nothing is raised any more.
        self.broker_host, self.broker_port = split_host_port(
            broker, DEFAULT_TLS_BROKER_PORT if tls is not None else DEFAULT_BROKER_PORT)
        self.credentials = credentials  # (user name, password); None: anonymous
        self.tls = tls
        self.cluster = check_topic_level(cluster, "cluster")
        self.peer_id = check_topic_level(peer_id, "peer id")
        split_host_port(address)
        if not keepalive > 0 or not 0 < reconnect_min <= reconnect_max or not op_timeout > 0 or gone_grace < 0:
            raise ValueError("need keepalive > 0, op_timeout > 0, 0 < reconnect_min <= reconnect_max, "
                             "gone_grace >= 0")
        self.address = address
        self.on_peer = on_peer
        self.on_gone = on_gone
        # MQTT keepalive is whole seconds; the broker fires our will after 1.5x of silence.
        self.keepalive = max(1, math.ceil(keepalive))
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.op_timeout = op_timeout
        self.gone_grace = gone_grace
        self._rng = rng or random.Random()
        self.instance = secrets.token_hex(8)
        self.topic = peers_topic(self.cluster, self.peer_id)
        self.filter = peers_filter(self.cluster)
        self._prefix = f"{TOPIC_ROOT}/{self.cluster}/peers/"
        self._payload = Announcement(self.peer_id, self.address, self.instance).encode()
        self._known: dict[str, tuple[str, str]] = {}  # peer id -> (address, instance)
        self._duplicates_warned: set[str] = set()
        self._failing = False  # failures since the last good session have been reported
        self._pending_gone: dict[str, asyncio.TimerHandle] = {}
        self._cleanups: set[asyncio.Future[None]] = set()

        # Status, read by the admin API and tests.
        self.connected = False      # a session is up: announced and subscribed
        self.announced = False      # our announcement has come back from the broker this session
        self.connects = 0           # sessions established (the first one plus reconnections)
        self.failures = 0           # connection attempts that failed plus sessions that were lost
        self.announcements_seen = 0  # valid announcements of other peers received
        self.removals_seen = 0      # deletions of other peers' announcements received
        self.rejected = 0           # invalid messages ignored
        self.reannounced = 0        # times our announcement was deleted under us and restored
        self.last_error = ""

    @property
    def reconnects(self) -> int:
        """Sessions established after the first one."""
        return max(0, self.connects - 1)

    @property
    def peers(self) -> dict[str, str]:
        """Peers currently announced on the broker, as last seen: id -> gossip address."""
        return {pid: addr for pid, (addr, _) in self._known.items()}

    def status(self) -> dict[str, object]:
        return {"broker": f"{self.broker_host}:{self.broker_port}", "cluster": self.cluster,
                "connected": self.connected, "announced": self.announced, "connects": self.connects,
                "reconnects": self.reconnects, "failures": self.failures,
                "announcements_seen": self.announcements_seen, "removals_seen": self.removals_seen,
                "rejected": self.rejected, "reannounced": self.reannounced, "peers": len(self._known),
                "last_error": self.last_error}

    # -- lifecycle ------------------------------------------------------------------------------
    async def run(self, stopping: asyncio.Event) -> None:
        """Stay connected (retrying forever) until ``stopping`` is set; never raises.

        On stop the announcement is deleted and the session closed gracefully (so the
        broker discards the will). Cancelling the task does the same cleanup (waiting
        for the broker at most ``op_timeout``) and then re-raises.
        """
        next_delay = backoff_delays(self.reconnect_min, self.reconnect_max, self._rng)
        while not stopping.is_set():
            started = time.monotonic()
            sessions_before = self.connects
            try:
                await self._session(stopping)
            except aiomqtt.MqttError as e:
                self._note_failure(f"MQTT: {e}")
            except OSError as e:
                self._note_failure(f"network: {e}")
            except Exception as e:  # a bug must not take the daemon's discovery down for good
                log.exception("mqtt discovery: unexpected error; retrying")
                self._note_failure(f"{type(e).__name__}: {e}")
            finally:
                self.connected = False
                self.announced = False
            if stopping.is_set():
                break
            # A session that stayed up a while resets the backoff; a broker that accepts
            # and drops us at once keeps growing it, so we never spin on it.
            if self.connects > sessions_before and time.monotonic() - started >= self.reconnect_max:
                next_delay = backoff_delays(self.reconnect_min, self.reconnect_max, self._rng)
            delay = next_delay()
            log.debug("mqtt discovery: retrying %s:%d in %.2f s", self.broker_host, self.broker_port, delay)
            try:
                await asyncio.wait_for(stopping.wait(), timeout=delay)
            except TimeoutError:
                pass
        log.info("mqtt discovery stopped (%d session(s), %d failure(s))", self.connects, self.failures)

    def _note_failure(self, reason: str) -> None:
        self.failures += 1
        self.last_error = reason
        # One warning when things go wrong, not one per retry of an unreachable broker.
        if not self._failing or self.failures % 30 == 0:
            self._failing = True
            log.warning("mqtt discovery: %s (broker %s:%d); retrying in the background, gossip unaffected",
                        reason, self.broker_host, self.broker_port)
        else:
            log.debug("mqtt discovery: %s", reason)

    async def _session(self, stopping: asyncio.Event) -> None:
        """One connection: announce, subscribe, consume until it drops or we stop."""
        client = aiomqtt.Client(
            self.broker_host, self.broker_port,
            identifier=f"hearsay-{self.peer_id}-{self.instance}",
            will=aiomqtt.Will(self.topic, payload=b"", qos=1, retain=True),
            keepalive=self.keepalive, timeout=self.op_timeout, clean_session=True,
            username=self.credentials[0] if self.credentials else None,
            password=self.credentials[1] if self.credentials else None,
            tls_params=self.tls.params() if self.tls is not None else None,
            logger=_PAHO_LOG)
        # Connecting may take the TCP connect timeout (in an executor thread) and then
        # op_timeout waiting for CONNACK; a stop during that must not wait for it. Nor can
        # the attempt be cancelled: aiomqtt would leave a half-open client whose socket
        # callbacks then fail. So it is left to finish on its own, and cleaned up.
        connecting = asyncio.ensure_future(client.__aenter__())
        try:
            connected = await _first_or_stopping(connecting, stopping)
        except asyncio.CancelledError:
            self._detach(self._finish_abandoned(client, connecting))
            raise
        if not connected:
            self._detach(self._finish_abandoned(client, connecting))
            return
        connecting.result()  # raises MqttError if the connection failed
        consuming: asyncio.Future[None] | None = None
        try:
            # Announce before subscribing: the retained copy of our own topic that the
            # subscription replays is then the one we just wrote (or a deletion that
            # raced it, which _handle repairs).
            await client.publish(self.topic, self._payload, qos=1, retain=True)
            await client.subscribe(self.filter, qos=1)
            self.connects += 1
            self.connected = True
            self._failing = False
            if self.connects == 1:
                log.info("mqtt discovery: announced %s at %s on %s:%d", self.peer_id, self.address,
                         self.broker_host, self.broker_port)
            else:
                log.info("mqtt discovery: reconnected to %s:%d and re-announced (after %d failure(s))",
                         self.broker_host, self.broker_port, self.failures)
            consuming = asyncio.ensure_future(self._consume(client))
            if await _first_or_stopping(consuming, stopping):
                consuming.result()  # _consume only ends by raising (the connection dropped)
                return
            await self._withdraw(client, consuming)
        except asyncio.CancelledError:
            # Cancelled rather than stopped: withdraw all the same, or the graceful
            # disconnect below would make the broker drop the will and keep a stale
            # announcement.
            await self._withdraw(client, consuming)
            raise
        finally:
            self.connected = False
            self._cancel_pending_gone()
            await _close(client)

    async def _withdraw(self, client: aiomqtt.Client, consuming: asyncio.Future[None] | None) -> None:
        """Stop consuming and delete our announcement ourselves, before a clean disconnect.

        A clean disconnect makes the broker discard the will, so the deletion has to be
        published explicitly.
        """
        self.connected = False
        if consuming is not None:
            await _cancelled(consuming)
        try:
            await client.publish(self.topic, b"", qos=1, retain=True)
        except aiomqtt.MqttError as e:
            log.warning("mqtt discovery: could not withdraw the announcement: %s", e)

    def _detach(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(work)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    @property
    def cleanups_pending(self) -> int:
        """Abandoned connection attempts still finishing in the background (see _session)."""
        return len(self._cleanups)

    async def _finish_abandoned(self, client: aiomqtt.Client, connecting: asyncio.Future[Any]) -> None:
        """Let a connection attempt that started before a stop end, then close it cleanly."""
        try:
            await connecting
        except (aiomqtt.MqttError, OSError) as e:
            log.debug("mqtt discovery: abandoned connection attempt failed: %s", e)
            return
        try:
            # An announcement of ours may still be retained from an earlier session.
            await client.publish(self.topic, b"", qos=1, retain=True)
        except aiomqtt.MqttError as e:
            log.debug("mqtt discovery: abandoned connection: %s", e)
        finally:
            await _close(client)

    async def _consume(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if isinstance(payload, str):
                payload = payload.encode("utf-8")
            elif not isinstance(payload, (bytes, bytearray)):
                payload = b"" if payload is None else str(payload).encode("utf-8")
            if self._handle(str(message.topic), bytes(payload)):
                await client.publish(self.topic, self._payload, qos=1, retain=True)

    # -- messages -------------------------------------------------------------------------------
    def _handle(self, topic: str, payload: bytes) -> bool:
        """Act on one message; True when our own announcement must be published again."""
        if not topic.startswith(self._prefix):
            self._reject(topic, "not under the peers topic")
            return False
        topic_id = topic[len(self._prefix):]
        try:
            check_topic_level(topic_id, "peer id")
        except ValueError as e:
            self._reject(topic, str(e))
            return False

        if topic_id == self.peer_id:
            return self._handle_own(payload)

        if not payload:  # deletion: graceful stop or last will
            self._schedule_gone(topic_id)
            return False
        try:
            ann = decode_announcement(topic_id, payload)
        except AnnouncementError as e:
            self._reject(topic, str(e))
            return False
        self.announcements_seen += 1
        pending = self._pending_gone.pop(ann.peer_id, None)
        if pending is not None:  # deleted and announced again within the grace: never gone
            pending.cancel()
        seen = (ann.address, ann.instance)
        if self._known.get(ann.peer_id) != seen:
            self._known[ann.peer_id] = seen
            log.info("mqtt discovery: found %s at %s", ann.peer_id, ann.address)
            self._call(self.on_peer, ann.peer_id, ann.address)
        return False

    def _schedule_gone(self, peer_id: str) -> None:
        """Report a deletion only if our session outlives it by ``gone_grace`` seconds.

        A broker that shuts down gracefully (Mosquitto on SIGTERM) publishes the will of
        every client before it closes their connections: each peer then sees everyone
        deleted. Those deletions are the broker's news, not the peers', and must not
        reach the daemon; a session that ends within the grace drops them. The grace
        also absorbs a deletion that is repaired at once (a peer restoring its own
        announcement, a quick restart).
        """
        self.removals_seen += 1
        if peer_id not in self._known or peer_id in self._pending_gone:
            return
        self._pending_gone[peer_id] = asyncio.get_running_loop().call_later(
            self.gone_grace, self._confirm_gone, peer_id)

    def _confirm_gone(self, peer_id: str) -> None:
        self._pending_gone.pop(peer_id, None)
        if not self.connected or self._known.pop(peer_id, None) is None:
            return
        log.info("mqtt discovery: %s is gone", peer_id)
        if self.on_gone is not None:
            self._call(self.on_gone, peer_id)

    def _cancel_pending_gone(self) -> None:
        for handle in self._pending_gone.values():
            handle.cancel()
        self._pending_gone.clear()

    def _handle_own(self, payload: bytes) -> bool:
        if not payload:
            # Our announcement was deleted while we are alive: typically the will of a
            # previous run of this peer whose dead connection the broker only now timed
            # out. Put it back.
            self.announced = False
            self.reannounced += 1
            log.info("mqtt discovery: our announcement was deleted; announcing again")
            return True
        if payload == self._payload:
            self.announced = True
            return False
        try:
            ann = decode_announcement(self.peer_id, payload)
        except AnnouncementError as e:
            self._reject(f"{self.topic}", str(e))
            return False
        if ann.instance not in self._duplicates_warned:
            # Another live process uses our id. Do not fight over the topic (both would
            # republish forever); say so once, loudly.
            self._duplicates_warned.add(ann.instance)
            log.error("mqtt discovery: another peer announces our id %r (at %s); peer ids must be unique",
                      self.peer_id, ann.address)
        return False

    def _reject(self, topic: str, reason: str) -> None:
        self.rejected += 1
        log.warning("mqtt discovery: ignored message on %r: %s", topic[:200], reason)

    def _call(self, callback: Callable[..., None], *args: str) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("mqtt discovery: callback %r failed for %r", callback, args)


async def _close(client: aiomqtt.Client) -> None:
    """Disconnect ``client`` and read how its connection ended, whatever ended it.

    aiomqtt keeps a lost connection's reason (``MqttCodeError [code:128]`` when the
    broker goes away) in a future that only its message iterator reads. When something
    else met the loss first (a publish or subscribe that failed or timed out, as around
    a broker restart), ``__aexit__`` sees the connection already down and returns
    without reading it, and asyncio reports "Future exception was never retrieved" when
    the client is collected, typically at the daemon's shutdown. Reading it here is the
    one place every session and abandoned attempt passes through.
    """
    try:
        await client.__aexit__(None, None, None)
    except aiomqtt.MqttError as e:
        log.debug("mqtt discovery: disconnect: %s", e)
    ended = getattr(client, "_disconnected", None)  # aiomqtt 2.x; nothing to read in other versions
    if isinstance(ended, asyncio.Future) and ended.done() and not ended.cancelled():
        reason = ended.exception()
        if reason is not None:
            log.debug("mqtt discovery: connection ended: %s", reason)


async def _first_or_stopping(work: asyncio.Future[Any], stopping: asyncio.Event) -> bool:
    """Wait until ``work`` is done (True) or ``stopping`` is set first (False); cancel nothing.

    If both happen together, ``work`` wins: a connection that has just come up is then
    closed properly by the caller rather than abandoned.
    """
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    return work.done()


async def _cancelled(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait for it to end, whatever it ends with."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception as e:  # noqa: BLE001 - it failed while we were abandoning it anyway
        log.debug("mqtt discovery: abandoned operation ended with %r", e)
