"""Composition root: wires one peer together and owns its lifecycle.

start: load data and model -> resume from the newest valid checkpoint (if a data
directory is set) -> bind the gossip server (Gossip + Membership) and the admin
server -> start SWIM, joining through the seeds and the saved member list -> start
the trainer thread, the gossip loop and the checkpoint loop. stop (SIGTERM/SIGINT, or
Leave): gossip a SWIM leave and keep answering until it has gone out, stop starting
exchanges, let calls in flight finish for a grace period, stop the trainer.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import random
import resource
import signal
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from threadpoolctl import threadpool_limits

from hearsay.v1 import admin_pb2_grpc, membership_pb2_grpc
from peer.runtime import checkpoint, logs
from peer.ops.admin import ADMIN_PORT_SERVICES, AdminServicer
from peer.transport.admission import Gate, limits_from_config
from peer.ops.auth import BearerTokenInterceptor
from peer.runtime.config import ConfigError, PeerConfig, cluster_init_seed, did_you_mean, parse_option
from peer.data import dataset_from_config, partition
from peer.discovery.mqtt import BrokerTls, MqttDiscovery
from peer.runtime.evaluation import policy_from_config
from peer.runtime.lr_schedule import lr_schedule_for
from peer.runtime.gossip import GossipEngine
from peer.runtime.keyframe_room import make_room_for_reply, make_room_inbound
from peer.runtime.membership import MembershipEvents, MembershipRuntime
from peer.runtime.sampled_rounds import SampledRounds
from peer.ops.metrics import NodeMetrics
from peer.transport.ports import StartError, check_port_free
from peer.models import build_model
from peer.runtime.trainer import Trainer, resolve_device
from peer.transport.channels import channel_credentials
from peer.transport.connection_watch import ConnectionWatch, server_ids
from peer.transport.grpc_transport import (HANDSHAKE_TIMEOUT_MS, NO_REUSEPORT, GossipClient, GossipServicer,
                                           server_options)
from peer.transport.keyring_file import KeyringFile
from peer.transport.grpc_transport import add_to_server as add_gossip_to_server
from peer.transport.membership_grpc import MembershipClient, MembershipServicer
from peer.transport.tls_front import TlsFront, TlsRefused, server_context
from peer.runtime.validation import Validator, make_validator, split_validation
from protocol.deadlines import DeadlinePolicy
from protocol.membership import StaticMembership, Swim, SwimConfig
from protocol.merge import LossCheckedRule, MergeRule, make_rule
from protocol.reputation import Reputation
from protocol.wire import Limits

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 2.0
CHECKPOINT_FORMAT = 1


# Runtime knobs the admin API's Set may change: options of PeerConfig, checked by its rules.
SETTABLE = ("gossip_interval", "codec", "merge", "log_level", "lr")


def _grpc_port(server: grpc.aio.Server, what: str, host: str, port: int) -> int:
    """Bind ``server`` to ``host:port`` with reuse off; ``StartError`` when that fails."""
    check_port_free(what, host, port)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        return server.add_insecure_port(target)
    except RuntimeError as e:  # taken between the check and now, or refused by gRPC itself
        raise StartError(f"{what} port {target}: cannot bind ({str(e).split(';')[0]})") from None


def limit_threads(threads: int) -> None:
    """At most ``threads`` compute threads for torch *and* numpy's BLAS. OpenBLAS starts one
    worker per core and lets it spin between calls; the merges' numpy work (distances, the
    robust centre) kept it spinning: in 8 peers of ``hearsay cluster`` on 2 cores that idle
    thread took more CPU than the peer's training (39 s against 17 s in 200 s; issue 11,
    session 10). Call it once the data set is loaded: loading digits brings scipy's own
    OpenBLAS, a second pool."""
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads, user_api="blas")


def build_trainer_and_validation(config: PeerConfig) -> tuple[Trainer, tuple[torch.Tensor, torch.Tensor]]:
    """Data shard, model and optimiser for this peer, all seeded from the config, and the
    samples the loss check scores models on: the
    ``validation_split`` held out of the shard, or the training shard itself when 0."""
    data = dataset_from_config(config)
    limit_threads(config.threads)
    shards = partition(data.train_y, config.shard_count, config.partition, config.alpha, config.data_seed)
    shard, held = split_validation(shards[config.shard_index], config.validation_split, config.seed)
    # init=shared: the whole cluster starts from one model (see PeerConfig.init); whatever
    # else draws from torch's global generator afterwards stays seeded per peer.
    torch.manual_seed(cluster_init_seed(config.cluster) if config.init == "shared" else config.seed)
    model = build_model(config.model, data.input_shape, data.num_classes)
    torch.manual_seed(config.seed)
    trainer = Trainer(model, data, shard, device=resolve_device(config.device),
                      seed=config.seed, batch_size=config.batch_size, lr=config.lr, momentum=config.momentum,
                      max_steps=config.max_steps, steps_per_second=config.steps_per_second,
                      eval_policy=policy_from_config(config), merge_momentum=config.merge_momentum,
                      drift_correction=config.drift_correction,
                      lr_schedule=lr_schedule_for(config.lr_schedule, config.lr_horizon, config.lr_floor))
    if not len(held):
        return trainer, (trainer.train_x, trainer.train_y)
    return trainer, (torch.as_tensor(data.train_x[held], device=trainer.device),
                     torch.as_tensor(data.train_y[held], device=trainer.device))


class Node:
    def __init__(self, config: PeerConfig) -> None:
        self.config = config
        self.clock = time.monotonic
        self.started_at = self.clock()
        self.trainer, self._validation_data = build_trainer_and_validation(config)
        self._validator: Validator | None = None  # built on first need (a scratch copy of the model)
        self.peer_id = config.resolved_peer_id()
        self.address = config.gossip_address()
        self.admin_address = f"{config.admin_host}:{config.admin_port}"
        self.metrics_address = ""
        self.data_dir = Path(config.data_dir) if config.data_dir else None
        self.stopping = asyncio.Event()
        self.leaving = False
        # Mutual TLS on every peer link when tls_* are set (both ends: the server behind a
        # TlsFront, the clients with the same certificate); plaintext otherwise.
        self.tls = config.tls_identity()
        self._credentials = channel_credentials(self.tls) if self.tls is not None else None
        self._tls_front: TlsFront | None = None
        self._connection_watch: ConnectionWatch | None = None  # plaintext: counts the silent connections gRPC closes
        # Without TLS, a cluster keyring (protocol/keyring.py): every gossip and membership
        # message, request and reply, carries an HMAC; what does not verify is refused unread.
        self.keyring = KeyringFile(config.keyring) if config.keyring else None
        keyring = self.keyring.current if self.keyring is not None else None
        self.client = GossipClient(max_packet_bytes=self._max_packet_bytes(), credentials=self._credentials,
                                   keyring=keyring)
        self.metrics = NodeMetrics(self)
        self.last_checkpoint: checkpoint.Saved | None = None
        self.last_checkpoint_step = 0
        self._last_checkpoint_at: float | None = None
        self._checkpoint_lock = asyncio.Lock()
        self.resumed: tuple[str, int, str] | None = None  # (file, step, model digest after restore)
        self._saved_members: list[dict[str, str]] = []
        self._discovered_addresses: list[str] = []
        self.bootstrapped_from = ""  # peer id whose model we adopted when joining
        self._gossip_server: grpc.aio.Server | None = None
        self._admin_server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.discovery: MqttDiscovery | None = None
        self.membership: StaticMembership | Swim
        self.swim: MembershipRuntime | None = None  # None with membership=static
        self.engine: GossipEngine
        self.rounds: SampledRounds | None = None  # mode=sampled: the rounds replace the gossip loop

    def _max_packet_bytes(self) -> int:
        return int(self.config.max_packet_mb * (1 << 20))

    def uptime(self) -> float:
        return self.clock() - self.started_at

    # --- checkpoints -------------------------------------------------------------------------
    def _resume(self) -> None:
        assert self.data_dir is not None
        removed = checkpoint.remove_temporaries(self.data_dir)
        if removed:
            log.info("removed %d partial checkpoint file(s) left by a crash", removed)
        found = checkpoint.load_latest(self.data_dir)
        if found is None:
            return
        path, state = found
        if state.get("format") != CHECKPOINT_FORMAT:
            log.warning("ignoring checkpoint %s of format %r", path.name, state.get("format"))
            return
        self.trainer.restore(state["trainer"])
        self._saved_members = list(state.get("members", []))
        self.resumed = (str(path), self.trainer.stats().steps, self.trainer.digest())
        log.info("resumed from %s at step %d (%d saved members)", path.name, self.trainer.stats().steps,
                 len(self._saved_members))

    def _checkpoint_payload(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "peer_id": self.peer_id, "address": self.address,
            "trainer": self.trainer.checkpoint_state(),
            "members": [{"address": m.address, "peer_id": m.peer_id} for m in self.membership.members()],
        }

    async def save_checkpoint(self) -> checkpoint.Saved:
        """Write a checkpoint now (serialised with the periodic ones)."""
        if self.data_dir is None:
            raise RuntimeError("no data directory configured (set data_dir / --data-dir)")
        async with self._checkpoint_lock:
            payload = await asyncio.to_thread(self._checkpoint_payload)
            saved = await asyncio.to_thread(checkpoint.save, self.data_dir, payload, self.config.checkpoint_keep)
            self.last_checkpoint = saved
            self.last_checkpoint_step = int(payload["trainer"]["steps"])
            self._last_checkpoint_at = self.clock()
            log.debug("checkpoint %s at step %d", saved.path.name, self.last_checkpoint_step)
            return saved

    def checkpoint_age(self) -> float:
        return -1.0 if self._last_checkpoint_at is None else self.clock() - self._last_checkpoint_at

    async def _checkpoint_loop(self) -> None:
        interval = self.config.checkpoint_interval
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), timeout=interval)
                return
            except TimeoutError:
                pass
            try:
                await self.save_checkpoint()
            except OSError as e:
                log.error("checkpoint failed: %s", e)

    # --- merge rule --------------------------------------------------------------------------
    def _make_rule(self, name: str) -> MergeRule:
        """``make_rule(name)``; a rule with a loss check gets this peer's validator (config loss_check)."""
        rule = make_rule(name)
        if self.config.loss_check and isinstance(rule, LossCheckedRule):
            if self._validator is None:
                x, y = self._validation_data
                self._validator = make_validator(copy.deepcopy(self.trainer.model), x, y)
            rule.validator = self._validator
        return rule

    # --- runtime knobs -----------------------------------------------------------------------
    def knobs(self) -> dict[str, str]:
        return {"gossip_interval": repr(self.engine.interval), "codec": self.engine.codec.name,
                "merge": self.engine.merge_rule.name, "log_level": logging.getLevelName(logging.getLogger().level).lower(),
                "lr": repr(self.trainer.base_lr)}

    def set_knob(self, key: str, value: str) -> tuple[str, str]:
        """Change one knob; returns (previous, now). ``ValueError`` with a one-line reason.

        Each knob is a config option, and its value passes the same checks as at start
        (type, finite, range, choices), so Set can never give a peer a value a restart would refuse.
        """
        if key not in SETTABLE:
            raise ValueError(f"unknown key {key!r}{did_you_mean(key, SETTABLE)}; settable: {', '.join(SETTABLE)}")
        previous = self.knobs()[key]
        try:
            parsed = parse_option(key, value.lower() if key == "log_level" else value)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        if key == "gossip_interval":
            self.engine.interval = parsed  # wakes the gossip loop: the new interval counts from now
        elif key == "codec":
            self.engine.set_codec(parsed)
        elif key == "merge":
            self.engine.merge_rule = self._make_rule(parsed)
        elif key == "log_level":
            logging.getLogger().setLevel(parsed.upper())
        elif key == "lr":
            self.trainer.set_base_lr(parsed)  # the base rate: an lr_schedule keeps scaling it
        log.info("set %s = %s (was %s)", key, parsed, previous)
        return previous, self.knobs()[key]

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        if self.data_dir is not None:
            await asyncio.to_thread(self._resume)
        servers_before = server_ids()
        self._gossip_server = grpc.aio.server(options=server_options())
        if self.tls is not None:  # gRPC listens privately; the public port is the front's, TLS only
            self._tls_front = TlsFront(server_context(self.tls), on_refused=self._tls_refused)
            self._gossip_server.add_insecure_port(self._tls_front.backend_target)
            try:
                gossip_port = await self._tls_front.bind(cfg.host, cfg.port)
            except OSError as e:
                raise StartError(f"gossip port {cfg.host}:{cfg.port}: {e.strerror or e}") from None
        else:
            gossip_port = _grpc_port(self._gossip_server, "gossip", cfg.host, cfg.port)
            # gRPC closes silent plaintext connections in its core; channelz lets us count them.
            created = server_ids() - servers_before
            if len(created) == 1:  # else another thread made a server meanwhile: which is ours is unknown
                self._connection_watch = ConnectionWatch(
                    created.pop(), HANDSHAKE_TIMEOUT_MS / 1000,
                    on_refused=lambda refused: self.engine.count_rejected(refused))
        if not cfg.advertise:
            self.address = f"{cfg.host}:{gossip_port}"
        if not cfg.peer_id:
            self.peer_id = PeerConfig(port=gossip_port).resolved_peer_id()
        logs.set_peer_id(self.peer_id)
        self.membership = self._build_membership()
        for seed in cfg.seeds:
            self.membership.add_seed(seed)
        for saved in self._saved_members:  # rejoin: everyone we knew before the restart
            self.membership.add_seed(saved["address"])
        self.engine = GossipEngine(
            peer_id=self.peer_id, address=self.address, trainer=self.trainer, membership=self.membership,
            merge_rule=self._make_rule(cfg.merge), codec=cfg.codec,
            limits=Limits(max_packet_bytes=self._max_packet_bytes()), rng=random.Random(cfg.seed),
            interval=cfg.gossip_interval, timeout=cfg.gossip_timeout, clock=self.clock,
            topk_ratio=cfg.topk_ratio, keyframe_codec=cfg.keyframe_codec, error_feedback=cfg.error_feedback,
            max_links=cfg.max_links, small_codec=cfg.small_codec,
            deadlines=DeadlinePolicy(floor=min(cfg.exchange_deadline_floor, cfg.gossip_timeout),
                                     ceiling=cfg.gossip_timeout, idle_floor=cfg.exchange_idle_floor,
                                     idle_rtts=cfg.exchange_idle_rtts, safety=cfg.exchange_deadline_safety,
                                     assumed_rate=cfg.exchange_assumed_rate_kb * 1024))
        self.engine.fanout = cfg.fanout
        if cfg.mode == "sampled":
            self.rounds = SampledRounds(self.engine, trainers=cfg.round_trainers, aggregators=cfg.round_aggregators,
                                        steps=cfg.round_steps, deadline=cfg.round_deadline,
                                        rng=random.Random(f"rounds/{cfg.seed}"))
        self.engine.on_merge = self.metrics.merge_seconds.observe
        self.engine.on_exchange = self.metrics.exchange_seconds.observe
        self.engine.defence.reputation = Reputation() if cfg.reputation else None
        keyring = self.keyring.current if self.keyring is not None else None
        self.trainer.on_step = self.metrics.train_step_seconds.observe
        self.client.on_reply_head = partial(make_room_for_reply, self.engine)
        add_gossip_to_server(
            GossipServicer(self.engine, self._max_packet_bytes(), self.engine.count_rejected,
                           Gate(limits_from_config(cfg)), keyring=keyring,
                           certificate_of=self._tls_front.certificate_of if self._tls_front is not None else None,
                           on_head=partial(make_room_inbound, self.engine),
                           on_answered_early=self.engine.count_answered_early),
            self._gossip_server)
        if self.swim is not None:
            membership_pb2_grpc.add_MembershipServicer_to_server(
                MembershipServicer(self.swim.receive, on_rejected=self.engine.count_membership_refusal,
                                   keyring=keyring),
                self._gossip_server)
        if self.tls is None and self.keyring is None:
            log.warning("no TLS and no keyring: a packet's sender is only tied to the host it came from, so "
                        "anyone on a peer's host can speak for that peer (set tls_* or keyring)")

        token = cfg.token()
        self._admin_server = grpc.aio.server(interceptors=[BearerTokenInterceptor(token)] if token else [],
                                             options=[NO_REUSEPORT])
        admin_port = _grpc_port(self._admin_server, "admin", cfg.admin_host, cfg.admin_port)
        self.admin_address = f"{cfg.admin_host}:{admin_port}"
        admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(self, self.metrics), self._admin_server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._admin_server)
        reflection.enable_server_reflection(ADMIN_PORT_SERVICES, self._admin_server)

        if cfg.metrics_port >= 0:
            try:
                port = self.metrics.serve(cfg.metrics_host, cfg.metrics_port)
            except OSError as e:
                raise StartError(f"metrics port {cfg.metrics_host}:{cfg.metrics_port}: {e.strerror or e}") from None
            self.metrics_address = f"{cfg.metrics_host}:{port}"

        await self._gossip_server.start()
        if self._connection_watch is not None:
            self._connection_watch.start()
        if self._tls_front is not None and self.tls is not None:
            self._tls_front.start()
            log.info("gossip port %s serves mutual TLS only (certificate %s, valid until %s)", gossip_port,
                     self.tls.subject, f"{self.tls.not_after:%Y-%m-%d}")
        await self._admin_server.start()
        if self.swim is not None:  # after the server: acks to our first probes need somewhere to land
            self.swim.start()
        if cfg.mqtt_broker:  # only now: nobody should discover an address that is not listening yet
            tls_files = cfg.mqtt_tls_files()
            self.discovery = MqttDiscovery(cfg.mqtt_broker, cfg.cluster, self.peer_id, self.address,
                                           on_peer=self._discovered, on_gone=self._announcement_gone,
                                           credentials=cfg.mqtt_credentials(),
                                           tls=BrokerTls(*tls_files) if tls_files is not None else None)
            self._tasks.append(asyncio.create_task(self.discovery.run(self.stopping)))
        for service in ("", "hearsay.v1.Admin", "hearsay.v1.Gossip", "hearsay.v1.Membership"):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._tasks.append(asyncio.create_task(self._join_then_train()))
        if self.data_dir is not None and cfg.checkpoint_interval > 0:
            self._tasks.append(asyncio.create_task(self._checkpoint_loop()))
        log.info("peer %s up: gossip %s, admin %s, metrics %s, %d training samples, model %s on %s",
                 self.peer_id, self.address, self.admin_address, self.metrics_address or "off",
                 self.trainer.samples, cfg.model, self.trainer.device)
        # One machine-readable line on stdout: launchers learn the bound ports from it.
        print(json.dumps({"event": "ready", "peer_id": self.peer_id, "gossip": self.address,
                          "admin": self.admin_address, "metrics": self.metrics_address}), flush=True)

    def _tls_refused(self, refused: TlsRefused) -> None:
        """A caller failed our TLS handshake: counted and logged (with its address) with the
        other refusals, so Status ``rejected`` and the metrics show it by reason."""
        self.engine.count_rejected(refused)

    def _build_membership(self) -> StaticMembership | Swim:
        """SWIM driven by a runtime on this loop (default), or the static view."""
        cfg = self.config
        if cfg.membership == "static":
            return StaticMembership(self.address)
        # With a keyring or mTLS every membership message is authenticated: a relayed Leave is believed.
        swim_config = SwimConfig.for_period(cfg.probe_period,
                                            authenticated=self.keyring is not None or self.tls is not None)
        # Seeded per peer so runs repeat, distinct per address so peers do not probe in lockstep.
        swim = Swim(self.address, self.peer_id, rng=random.Random(f"{cfg.seed}/{self.address}"), config=swim_config)
        # Push-pull carries the whole member table and is off the detector's critical path: more time than a ping.
        client = MembershipClient(timeout=swim_config.probe_timeout,
                                  push_pull_timeout=max(4 * swim_config.probe_timeout, 1.0),
                                  credentials=self._credentials,
                                  keyring=self.keyring.current if self.keyring is not None else None)
        self.swim = MembershipRuntime(swim, client, clock=self.clock)
        return swim

    def membership_events(self) -> MembershipEvents:
        """Suspicions and deaths as the failure detector saw them (metrics read this)."""
        if self.swim is not None:
            return self.swim.events
        g = self.engine.stats  # the static view counts through the exchange loop
        return MembershipEvents(suspicions=g.suspicions, deaths=g.deaths)

    async def _join_then_train(self) -> None:
        """Fetch a trained model from the swarm (unless resuming), then train and gossip."""
        cfg = self.config
        if self.rounds is not None:  # a newcomer catches up by adopting the newest aggregate it hears of
            await self.rounds.run(self.client.exchange, self.stopping)
            return
        if self.resumed is None and cfg.bootstrap_timeout > 0 and (cfg.seeds or cfg.mqtt_broker):
            self.engine.joining = True

            def candidates() -> list[str]:
                known = [*cfg.seeds, *self._discovered_addresses,
                         *(m.address for m in self.membership.members())]
                return list(dict.fromkeys(known))

            fetch = asyncio.create_task(self.engine.bootstrap(
                candidates, self.client.exchange, self.clock() + cfg.bootstrap_timeout, cfg.bootstrap_min_steps))
            stop = asyncio.create_task(self.stopping.wait())
            await asyncio.wait((fetch, stop), return_when=asyncio.FIRST_COMPLETED)  # a stop ends the wait
            stop.cancel()
            if not fetch.done():
                fetch.cancel()
                await asyncio.gather(fetch, return_exceptions=True)
                return
            self.bootstrapped_from = fetch.result()
            self.engine.joining = False
        if self.stopping.is_set():
            return
        self.trainer.start()
        await self.engine.run(self.client.exchange, self.stopping)

    def _discovered(self, peer_id: str, address: str) -> None:
        self._discovered_addresses.append(address)
        if address != self.address:
            log.info("discovered %s at %s through MQTT", peer_id, address)
            if self.swim is not None:
                self.swim.join(address)  # push-pull now, not at the next lonely push-pull round
            else:
                self.membership.add_seed(address)

    def _announcement_gone(self, peer_id: str) -> None:
        # Only a hint: the failure detector, not the broker, decides who is dead.
        log.info("MQTT announcement of %s was removed", peer_id)

    async def leave(self) -> int:
        """Graceful drain: stop starting exchanges, let the ones in flight finish, then stop."""
        in_flight = self.engine.in_flight
        self.leaving = True
        if self.swim is not None:
            self.swim.announce_leave()  # at once: the drain below may take up to gossip_timeout
        self.engine.draining = True  # the gossip loop starts nothing new

        async def drain() -> None:
            deadline = self.clock() + self.config.gossip_timeout
            while self.engine.in_flight > 0 and self.clock() < deadline:
                await asyncio.sleep(0.05)  # polling a counter with a deadline, not a timing guess
            log.info("left the swarm (%d exchange(s) were in flight)", in_flight)
            self.stopping.set()

        self._tasks.append(asyncio.create_task(drain()))
        return in_flight

    async def stop(self) -> None:
        self.stopping.set()
        # Leave first and keep the server answering while the leave spreads, so nobody
        # has to detect our absence as a failure; it overlaps the drain of the tasks.
        leaving = asyncio.create_task(self.swim.leave()) if self.swim is not None else None
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        for task in self._tasks:
            await task
        if leaving is not None and self.swim is not None:
            await leaving
            await self.swim.close()
        if self._tls_front is not None:
            self._tls_front.stop_listening()  # calls in flight still run through it during the grace
        for server in (self._gossip_server, self._admin_server):
            if server is not None:
                await server.stop(SHUTDOWN_GRACE_SECONDS)
        if self._tls_front is not None:
            await self._tls_front.close()
        if self._connection_watch is not None:
            await self._connection_watch.close()
        await self.client.close()
        await asyncio.to_thread(self.trainer.stop)
        if self.data_dir is not None:
            try:
                await self.save_checkpoint()  # a clean stop leaves the newest state behind
            except OSError as e:
                log.error("final checkpoint failed: %s", e)
        self.metrics.close()
        log.info("peer %s stopped after %d steps", self.peer_id, self.trainer.stats().steps)

    async def serve(self) -> None:
        """Run until SIGTERM, SIGINT or Leave, then shut down cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        await self.start()
        await self.stopping.wait()
        await self.stop()


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit: every connection costs a descriptor,
    and at the usual soft 1,024 a thousand idle sockets stop the peer answering anyone.
    Returns (soft, hard) as now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warning("cannot raise the descriptor limit from %d to %d: %s", soft, hard, e)
    return soft, hard


def run(config: PeerConfig) -> int:
    """Entry point of `hearsay run`: one peer under uvloop."""
    import uvloop

    from peer.runtime.memory import configure_allocator

    configure_allocator()  # malloc arenas, HEARSAY_MMAP_THRESHOLD: before threads and the model exist

    raise_descriptor_limit()

    async def main() -> None:
        node = Node(config)
        await node.serve()

    try:
        uvloop.run(main())
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
    return 0
