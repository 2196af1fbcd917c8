"""Typed peer configuration: TOML file < environment (HEARSAY_*) < command-line flags.

Every option is one field of ``PeerConfig`` with its default and its documentation
in the field metadata; flags, environment names and the README table are all
derived from that single place.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import socket
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peer.runtime.lr_schedule import LR_SCHEDULES
from peer.runtime.option_checks import (
    ConfigError,
    check_token,
    check_value,
    default_of,
    did_you_mean,
    show,
)

if TYPE_CHECKING:
    from peer.transport.tls_identity import TlsIdentity

ENV_PREFIX = "HEARSAY_"
# Codecs for model deltas (raw is for integer tensors only).
WIRE_CODECS = ("fp32", "fp16", "int8", "int4", "topk", "topk_int8", "randk")
# Codecs of keyframes (a whole model, dense) and of small tensors' deltas (under 4096 elements,
# where sparse codecs would not help).
KEYFRAME_CODECS = ("fp32", "fp16")
SMALL_CODECS = ("fp32", "fp16", "int8")
# The model zoo's names (peer.models.ZOO; a test keeps them equal), known here so a bad
# --model is refused before torch is imported.
ZOO_MODELS = ("mlp", "cnn", "cnn-small", "cnn-pooled", "cnn-wide")


# protocol.merge.RULES by name (a test keeps them equal): that module needs numpy, and a
# mistyped flag must be refused before anything heavy is imported.
MERGE_RULES = ("bristle", "bristle-vc", "clip", "clip-vc", "mean", "median", "trimmed", "vc", "vc-blend",
               "vc-self", "weighted")


def merge_rules() -> list[str]:
    return sorted(MERGE_RULES)


# What a merge does to SGD's momentum buffer (peer.runtime.trainer.Trainer.merge_momentum).
MERGE_MOMENTUM = ("keep", "reset")

SEED_MAX = 2**32 - 1  # numpy and scikit-learn take seeds below 2**32


def cluster_init_seed(cluster: str) -> int:
    """The seed of a cluster's shared initial model (``init = shared``): a hash of the
    cluster name, so peers that never spoke start from the same weights. The simulator
    (``peer.sim.setup``) derives its shared start the same way."""
    return int.from_bytes(hashlib.sha256(f"hearsay-init/{cluster}".encode()).digest()[:4], "big")


def _opt(default: Any, help: str, choices: Sequence[str] | None = None, *, lo: float | None = None,
         hi: float | None = None, lo_open: bool = False, seconds: bool = False, secret: bool = False,
         flag: bool = True, **kw: Any) -> Any:
    """One option: its default, its documentation and what values it accepts.

    ``lo``/``hi`` bound a number (``lo_open``: ``lo`` itself excluded); ``seconds`` marks a
    duration (the stop test runs a peer with every duration at its largest value);
    ``secret`` keeps the value out of every message and printout; ``flag=False`` keeps the
    option off the command line (a secret there would show in ps).
    """
    bounds = None if lo is None and hi is None else (lo, hi, lo_open)
    meta = {"help": help, "choices": tuple(choices) if choices else None, "range": bounds, "seconds": seconds,
            "secret": secret, "flag": flag}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class PeerConfig:
    # --- identity and network
    peer_id: str = _opt("", "Unique id of this peer; default: <hostname>-<port>.")
    host: str = _opt("127.0.0.1", "Address the gossip server binds to.")
    port: int = _opt(7070, "Gossip server port (0 picks a free port).", lo=0, hi=65535)
    advertise: str = _opt("", "host:port other peers use to reach us; default: <host>:<port>.")
    admin_host: str = _opt("127.0.0.1", "Address the admin server binds to (keep it on loopback).")
    admin_port: int = _opt(7071, "Admin server port (0 picks a free port).", lo=0, hi=65535)
    seeds: list[str] = _opt([], "Gossip addresses (host:port) of peers to contact at start; "
                                "comma-separated in the environment.")
    mqtt_broker: str = _opt("", "MQTT broker (host[:port], port 1883 by default) to announce this peer on and "
                                "find others through; empty = no MQTT discovery.")
    mqtt_username: str = _opt("", "User name for the MQTT broker (empty = anonymous); its password comes from "
                                  "mqtt_passwd_file or HEARSAY_MQTT_PASSWORD, never from a flag.")
    # Not mqtt_password_file: argparse would take `--mqtt-password SECRET` as an abbreviation of it.
    mqtt_passwd_file: str = _opt("", "File holding the MQTT broker password (first line; keep it 0600).")
    mqtt_password: str = _opt("", "MQTT broker password: environment or config file only (no flag, so it never "
                                  "shows in the process list); prefer mqtt_passwd_file.", flag=False, secret=True)
    mqtt_tls: bool = _opt(False, "Talk to the MQTT broker over TLS (port 8883 unless mqtt_broker names one), "
                                 "verifying it against the system CAs or mqtt_tls_ca; implied by mqtt_tls_ca.")
    mqtt_tls_ca: str = _opt("", "CA certificate (PEM) that signed the MQTT broker's certificate.")
    mqtt_tls_cert: str = _opt("", "Client certificate (PEM) for a broker that requires one; with mqtt_tls_key.")
    mqtt_tls_key: str = _opt("", "Private key (PEM, unencrypted) of mqtt_tls_cert.")
    cluster: str = _opt("default", "Swarm name: peers only discover peers of the same cluster "
                                   "(MQTT topic hearsay/<cluster>/peers/<peer_id>).")
    # --- data and model
    dataset: str = _opt("digits", "Data set: 'digits' (bundled with scikit-learn), 'fashion-mnist' (Debian's "
                                  "dataset-fashion-mnist, or data_path), 'idx:DIR' (MNIST-style IDX files), "
                                  "'npz:FILE' (x_train, y_train, x_test, y_test) or 'module:factory' returning a "
                                  "peer.data.Dataset.")
    data_path: str = _opt("", "Directory of the fashion-mnist files (default /usr/share/datasets/fashion-mnist); "
                              "passed to a module:factory data set as path=.")
    dataset_arg: list[str] = _opt([], "KEY=VALUE option for the data set (repeatable flag; comma-separated in "
                                      "the environment): passed to a module:factory as keyword arguments "
                                      "(strings); built-in sets take limit=N (a seeded subset of N training samples).")
    data_cache: str = _opt("", "Directory where decoded data files are cached, memory-mapped and shared by the "
                               "peers of a machine; default $XDG_CACHE_HOME/hearsay/datasets or "
                               "~/.cache/hearsay/datasets.")
    model: str = _opt("mlp", "Model: 'mlp', 'cnn' or 'module:factory(input_shape, num_classes)' "
                             "returning a torch.nn.Module.")
    partition: str = _opt("iid", "How the training data is split across peers.",
                          choices=("iid", "dirichlet"))
    alpha: float = _opt(0.5, "Dirichlet concentration for partition=dirichlet (smaller = more skewed).",
                        lo=0.0, hi=1e6, lo_open=True)
    shard_index: int = _opt(0, "Which shard of the training data this peer trains on (0-based).",
                            lo=0, hi=2**31 - 1)
    shard_count: int = _opt(1, "Number of shards the training data is split into (peers in the swarm).",
                            lo=1, hi=2**31 - 1)
    data_seed: int = _opt(0, "Seed of the test split and the partition; equal on every peer.", lo=0, hi=SEED_MAX)
    seed: int = _opt(0, "Seed of this peer's batch order and partner choice (and of its initial model with "
                        "init=own).", lo=0, hi=SEED_MAX)
    init: str = _opt("shared", "Initial model: shared = every peer of the cluster starts from the same weights, "
                               "seeded from the cluster name (as FedAvg starts every client from one model; the "
                               "robust merge rules tell honest models from attacks by their distance, which "
                               "independent starts hide); own = seeded from this peer's seed.",
                     choices=("shared", "own"))
    # --- training
    device: str = _opt("auto", "Where training runs: auto uses CUDA when present.",
                       choices=("auto", "cpu", "cuda"))
    threads: int = _opt(1, "Compute threads of torch and of numpy's BLAS (1 suits several peers per machine).",
                        lo=1, hi=1024)
    batch_size: int = _opt(32, "Mini-batch size of local SGD.", lo=1, hi=1 << 20)
    lr: float = _opt(0.05, "Learning rate of local SGD.", lo=0.0, hi=100.0, lo_open=True)
    momentum: float = _opt(0.9, "SGD momentum.", lo=0.0, hi=0.999)
    merge_momentum: str = _opt("keep", "What a merge does to SGD's momentum buffer: keep it, or reset it to zero "
                                       "(the buffer points along this shard's recent steps, which the merged "
                                       "weights did not take; bench/pace.py measures both).",
                               choices=MERGE_MOMENTUM)
    drift_correction: float = _opt(0.0, "Gain of the drift correction: the gradient minus a control variate for this "
                                        "shard's pull, learned from what merges undo (skewed shards; 0 = off; "
                                        "peer.runtime.drift_correction).", lo=0.0, hi=1.0)
    lr_schedule: str = _opt("constant", "The learning rate over the run: constant, or annealed from lr at the first "
                            "step to lr * lr_floor at lr_horizon, so merges dominate late (hearsay cluster: cosine "
                            "over its --duration, unless --target-accuracy may end it early).", choices=LR_SCHEDULES)
    lr_horizon: float = _opt(0.0, "Seconds after this peer's process started at which an annealed lr reaches its floor "
                                  "(start-up counts, as in hearsay cluster's --duration); needed by cosine and linear.",
                             lo=0.0, hi=10 * 365 * 86400.0, seconds=True)
    lr_floor: float = _opt(0.0, "An annealed lr at and after lr_horizon, as a fraction of lr.", lo=0.0, hi=1.0)
    max_steps: int = _opt(0, "Stop local training after this many steps (0 = never); "
                             "the peer keeps gossiping.", lo=0, hi=2**53)
    steps_per_second: float = _opt(50.0, "Upper bound on the local step rate (0 = unbounded); "
                                         "leaves CPU for gossip when peers share a machine.", lo=0.0, hi=1e6)
    eval_every: int = _opt(25, "Evaluate test accuracy at most every this many steps (eval_budget may space "
                               "evaluations further).", lo=1, hi=2**31 - 1)
    eval_samples: int = _opt(1000, "Evaluate on a seeded random subset of this many test samples, the same on "
                                   "every peer (from data_seed); 0 = the whole test set.", lo=0, hi=2**31 - 1)
    eval_budget: float = _opt(0.1, "Largest share of the trainer's time evaluation may take: after an evaluation "
                                   "that took t seconds the next waits (1 - eval_budget) / eval_budget * t "
                                   "seconds of training (1 = no limit).", lo=0.0, hi=1.0, lo_open=True)
    # --- gossip
    bootstrap_timeout: float = _opt(10.0, "On start without a checkpoint, seconds to spend fetching a trained "
                                          "model from a live peer before training (0 = never).",
                                    lo=0.0, hi=3600.0, seconds=True)
    bootstrap_min_steps: int = _opt(20, "Adopt a fetched model only if its peer has trained this many steps "
                                        "(a swarm that is just starting keeps independent initialisations).",
                                    lo=0, hi=2**53)
    # 0.3 s, not 1 s: with fewer local steps between merges a peer on a skewed shard drifts
    # less toward its own classes (bench/RESULTS.md, "The 8-peer Fashion-MNIST cluster").
    gossip_interval: float = _opt(0.3, "Seconds between the exchanges this peer starts (each merges on both "
                                       "sides): the fewer local steps between merges, the less a peer on a skewed "
                                       "shard drifts toward its own classes.", lo=0.001, hi=3600.0, seconds=True)
    gossip_timeout: float = _opt(300.0, "Most seconds an exchange may take: the ceiling of its deadline, which "
                                        "otherwise follows the link's measured rate and RTT (exchange_* options).",
                                 lo=0.01, hi=3600.0, seconds=True)
    fanout: int = _opt(1, "Exchanges started per gossip interval. Above 1: Epidemic Learning (de Vos et al. "
                          "2023): right after the round's exchanges, every model received since the last "
                          "merge (the replies included) is merged at once, the local model and each received "
                          "one weighing alike under vc.", lo=1, hi=64)
    mode: str = _opt("gossip", "gossip = asynchronous pairwise exchanges (fanout partners per interval); sampled = "
                               "server-free sampled rounds (MoDeST): each round, trainers and aggregators are "
                               "chosen by hashing the round number over the live view; trainers take round_steps "
                               "steps from the latest aggregate and send to the aggregators, which average them "
                               "(FedAvg weights) and pass the aggregate to the next round's trainers.",
                      choices=("gossip", "sampled"))
    round_trainers: int = _opt(0, "mode=sampled: trainers per round (0 = every live peer).", lo=0, hi=1 << 20)
    round_aggregators: int = _opt(1, "mode=sampled: aggregators per round (each averages what reaches it; more "
                                     "keep a round going when one dies).", lo=1, hi=64)
    round_steps: int = _opt(20, "mode=sampled: local steps a trainer takes per round.", lo=1, hi=1 << 20)
    round_deadline: float = _opt(10.0, "mode=sampled: seconds an aggregator waits for a round's trainers after the "
                                       "first model arrives (a dead trainer delays a round by at most this); also "
                                       "how long a peer waits for an aggregate before asking again.",
                                 lo=0.1, hi=3600.0, seconds=True)
    merge: str = _opt("bristle", "Merge rule for received models (protocol.merge.RULES); bristle = robust: far "
                                 "models, models whose merge would raise the local loss more than usual, and "
                                 "updates pointing away from the recent centre are left out (bench/byzantine.py); "
                                 "it needs init=shared. vc = variance-corrected averaging, for trusted swarms.",
                      choices=tuple(merge_rules()))
    codec: str = _opt("fp32", "Codec of model deltas on the wire (protocol.codecs); deltas go against a "
                              "per-link replica of what the partner holds, with error feedback.",
                      choices=WIRE_CODECS)
    topk_ratio: float = _opt(0.01, "Fraction of coordinates the topk, topk_int8 and randk codecs keep.",
                             lo=0.0, hi=1.0, lo_open=True)
    small_codec: str = _opt("fp32", "Codec of deltas of small float tensors (under 4096 elements: biases, norms, "
                                    "first layers), which sparse codecs would not help.",
                            choices=SMALL_CODECS)
    keyframe_codec: str = _opt("fp32", "Codec of keyframes (the whole model, sent when a link starts or "
                                       "loses sequence).", choices=KEYFRAME_CODECS)
    error_feedback: bool = _opt(True, "Keep the compression error and send it with later deltas (off only "
                                      "to measure what it buys).")
    max_links: int = _opt(64, "Per-link replicas kept (least recently used evicted; a keyframe follows).",
                          lo=1, hi=1 << 20)
    max_packet_mb: float = _opt(256.0, "Largest packet accepted from a peer, in MiB.",
                                lo=0.0, hi=16384.0, lo_open=True)
    # Per-link exchange deadlines (protocol/deadlines.py): total = safety x (rtt + bytes / rate),
    # clamped to [exchange_deadline_floor, gossip_timeout]; no progress for the idle limit gives up.
    exchange_deadline_floor: float = _opt(2.0, "Least seconds an exchange is given in all, however fast its link.",
                                          lo=0.01, hi=3600.0, seconds=True)
    exchange_idle_floor: float = _opt(1.0, "Least seconds without progress (no frame written or read) before an "
                                           "exchange is given up: a dead partner costs about this, not its deadline.",
                                      lo=0.01, hi=3600.0, seconds=True)
    exchange_idle_rtts: float = _opt(4.0, "Seconds without progress allowed, in round trips of the link (plus the "
                                          "time one frame takes at its measured rate).", lo=0.5, hi=1000.0)
    exchange_deadline_safety: float = _opt(3.0, "An exchange's deadline, as a multiple of the time its bytes take "
                                                "at the link's measured rate and RTT.", lo=1.0, hi=100.0)
    exchange_assumed_rate_kb: float = _opt(128.0, "Rate, in KiB/s, assumed of a link before its first exchange "
                                                  "is measured (the slowest link a first exchange fits).",
                                           lo=1.0, hi=1e8)
    # --- inbound limits (peer/transport/admission.py): what a peer's inbound exchanges may cost it
    stream_idle_timeout: float = _opt(5.0, "Longest pause, in seconds, between two frames of an inbound packet "
                                           "(and before its first); longer ends the exchange as stalled.",
                                      lo=0.01, hi=3600.0, seconds=True)
    stream_min_rate_kb: float = _opt(256.0, "Slowest average rate, in KiB/s, an inbound packet may arrive at after "
                                            "an allowance of stream_idle_timeout seconds (0 = no minimum); slower "
                                            "ends the exchange as too slow.", lo=0.0, hi=1e7)
    max_inbound_streams: int = _opt(128, "Inbound exchanges receiving at once; beyond it the longest-idle one is "
                                         "shed, or the new one refused (overloaded).", lo=1, hi=1 << 16)
    max_streams_per_connection: int = _opt(8, "Inbound exchanges receiving at once over one connection (IP:port); "
                                              "beyond it they are refused (too_many_from_peer).", lo=1, hi=1 << 16)
    inbound_buffer_mb: float = _opt(512.0, "MiB all incomplete inbound packets together may hold; beyond it the "
                                           "longest-idle one is shed, or the new frame refused (buffer_budget).",
                                    lo=0.0, hi=1 << 20, lo_open=True)
    max_inbound_processing: int = _opt(4, "Received packets decoded and merged at once (streams still receiving "
                                          "never hold these slots).", lo=1, hi=1024)
    # --- hostile peers (issue 7; bench/byzantine.py measures what each setting stops)
    reputation: bool = _opt(True, "Score every peer from the merge rule's verdicts and its refused replies "
                                  "(protocol/reputation.py); a peer below the ban threshold is not chosen as a "
                                  "partner and its packets are refused (PERMISSION_DENIED) until the score recovers.")
    loss_check: bool = _opt(True, "With merge=bristle or bristle-vc: refuse a received model whose merge would "
                                  "raise the local validation loss more than usual (protocol.merge.LossCheck).")
    validation_split: float = _opt(0.0, "Fraction of this peer's shard held out of training for the loss check; "
                                         "0 = check on the training shard (measured no worse on non-IID shards).",
                                   lo=0.0, hi=0.99)
    # --- membership
    membership: str = _opt("swim", "Failure detector: swim = SWIM + Lifeguard over gRPC (probes, suspicion, "
                                   "refutation, graceful leave); static = seeds and inbound contacts only, a member "
                                   "is dropped after 3 failed exchanges.", choices=("swim", "static"))
    probe_period: float = _opt(1.0, "SWIM probe period in seconds (memberlist's LAN default). The probe timeout "
                                    "(period/2), update gossip (period/5), push-pull (30 periods), reconnect "
                                    "(10 periods) and the suspicion timeout (4·ln(n+1) periods for n peers, shrinking to "
                                    "4·max(1, log10 n) as other peers confirm) all scale with it.",
                               lo=0.01, hi=10.0, seconds=True)
    # --- mutual TLS between peers (files made by `hearsay certs`)
    tls_ca: str = _opt("", "Cluster CA certificate (PEM); with tls_cert and tls_key the gossip port serves and "
                           "dials only mutual TLS, and admits only peers whose certificate this CA signed.")
    tls_cert: str = _opt("", "This peer's certificate (PEM), signed by tls_ca.")
    tls_key: str = _opt("", "This peer's private key (PEM, unencrypted; keep it 0600).")
    keyring: str = _opt("", "Cluster keyring file, for clusters without TLS: one key per line (16, 24 or 32 "
                            "bytes, base64 or hex), the first signs, all verify. Every gossip and membership "
                            "message carries an HMAC; one that does not verify is refused unread. Rotate by "
                            "editing the file on every peer (add, make first, remove); it is re-read on change.")
    require_tls: bool = _opt(False, "Refuse to start unless tls_ca, tls_cert and tls_key are set, so a peer "
                                    "meant for a TLS cluster never runs in plaintext by mistake.")
    # --- operations
    data_dir: str = _opt("", "Directory for checkpoints (resume from the newest valid one at start-up, "
                             "rejoin from its member list); empty = no checkpoints.")
    checkpoint_interval: float = _opt(60.0, "Seconds between periodic checkpoints when data_dir is set "
                                            "(0 = only on demand).", lo=0.0, hi=7 * 86400.0, seconds=True)
    checkpoint_keep: int = _opt(3, "How many of the newest checkpoints to keep.", lo=1, hi=100000)
    metrics_host: str = _opt("127.0.0.1", "Address the Prometheus metrics HTTP server binds to.")
    metrics_port: int = _opt(-1, "Prometheus metrics HTTP port (0 picks a free port, -1 = no HTTP server; "
                                 "metrics stay available through the admin API).", lo=-1, hi=65535)
    admin_token: str = _opt("", "Bearer token the admin API requires (prefer admin_token_file or the "
                                "environment); required when admin_host is not a loopback address.",
                            secret=True)
    admin_token_file: str = _opt("", "File holding the admin bearer token (first line).")
    log_level: str = _opt("info", "Lowest level of log records written to stderr.",
                          choices=("debug", "info", "warning", "error"))
    log_json: bool = _opt(False, "Write logs as one JSON object per line.")

    # -- derived values ---------------------------------------------------------------------
    def gossip_address(self) -> str:
        """The address other peers reach this peer's gossip server at."""
        return self.advertise or f"{self.host}:{self.port}"

    def resolved_peer_id(self) -> str:
        return self.peer_id or f"{socket.gethostname()}-{self.port}"

    def validate(self) -> PeerConfig:
        """Raise ``ConfigError`` naming the first option whose value cannot work."""
        for f in dataclasses.fields(self):
            check_value(f, getattr(self, f.name))
        relations = [
            (self.shard_index < self.shard_count, "shard_index must be in 0..shard_count-1"),
            (self.inbound_buffer_mb >= self.max_packet_mb,
             "inbound_buffer_mb must be at least max_packet_mb (else the largest packet could never arrive)"),
            (self.lr_schedule == "constant" or self.lr_horizon > 0, f"lr_schedule {self.lr_schedule} needs lr_horizon"),
        ]
        for ok, message in relations:
            if not ok:
                raise ConfigError(message)
        if ":" not in self.model and self.model not in ZOO_MODELS:
            raise ConfigError(f"model: {show(self.model)} is not one of {', '.join(ZOO_MODELS)}"
                              f"{did_you_mean(self.model, ZOO_MODELS)} (or module:factory for your own; "
                              "its module must be importable, e.g. through PYTHONPATH)")
        for seed in self.seeds:
            _check_address(seed, "seeds")
        if self.advertise:
            _check_address(self.advertise, "advertise")
        if self.mqtt_broker:
            from peer.discovery.announcements import check_topic_level, split_host_port

            try:
                split_host_port(self.mqtt_broker, 1883)
                check_topic_level(self.cluster, "cluster")
            except ValueError as e:
                raise ConfigError(f"mqtt_broker/cluster: {e}") from None
            self.mqtt_credentials()
            self.mqtt_tls_files()
            if self.host in ("0.0.0.0", "::") and not self.advertise:
                raise ConfigError("announcing a wildcard address over MQTT: set advertise to an address "
                                  "other peers can reach")
        self.tls_identity()
        if self.keyring:
            from peer.transport.keyring_file import read_keyring
            from protocol.keyring import KeyringError

            try:
                read_keyring(self.keyring)
            except KeyringError as e:
                raise ConfigError(f"keyring: {e}") from None
        token = self.token()
        if not is_loopback(self.admin_host) and not token:
            raise ConfigError(f"admin_host {self.admin_host!r} is not loopback: set admin_token_file or "
                              "HEARSAY_ADMIN_TOKEN so the admin API is not open to the network")
        return self

    def tls_identity(self) -> TlsIdentity | None:
        """The checked TLS files (``None``: plaintext); ``ConfigError`` naming what is wrong."""
        paths = {"tls_ca": self.tls_ca, "tls_cert": self.tls_cert, "tls_key": self.tls_key}
        if not any(paths.values()):
            if self.require_tls:
                raise ConfigError("require_tls is set but tls_ca, tls_cert and tls_key are not "
                                  "(make them with `hearsay certs`)")
            return None
        missing = [name for name, value in paths.items() if not value]
        if missing:
            raise ConfigError(f"tls_ca, tls_cert and tls_key go together: {', '.join(missing)} not set")
        from peer.transport.tls_identity import CertError, load_identity

        try:
            return load_identity(self.tls_ca, self.tls_cert, self.tls_key)
        except CertError as e:
            raise ConfigError(str(e)) from None

    def mqtt_credentials(self) -> tuple[str, str | None] | None:
        """(user name, password) for the broker, ``None`` for anonymous; ``ConfigError`` naming what is wrong."""
        password = self.mqtt_password or None
        if self.mqtt_passwd_file:
            if password is not None:
                raise ConfigError("mqtt_password and mqtt_passwd_file: set one of them, not both")
            password = _first_line(self.mqtt_passwd_file, "mqtt_passwd_file", "a password")
        if not self.mqtt_username:
            if password is not None:
                raise ConfigError("an MQTT password is set but mqtt_username is not (MQTT sends no password "
                                  "without a user name)")
            return None
        return self.mqtt_username, password

    def mqtt_tls_files(self) -> tuple[str, str, str] | None:
        """(CA, client certificate, client key) for TLS to the broker, ``""`` where unset; ``None``: plaintext."""
        files = {"mqtt_tls_ca": self.mqtt_tls_ca, "mqtt_tls_cert": self.mqtt_tls_cert,
                 "mqtt_tls_key": self.mqtt_tls_key}
        if not self.mqtt_tls and not any(files.values()):
            return None
        if bool(self.mqtt_tls_cert) != bool(self.mqtt_tls_key):
            raise ConfigError("mqtt_tls_cert and mqtt_tls_key go together")
        for name, path in files.items():
            if path and not os.access(path, os.R_OK):
                raise ConfigError(f"{name}: cannot read {path}")
        return self.mqtt_tls_ca, self.mqtt_tls_cert, self.mqtt_tls_key

    def token(self) -> str:
        """The admin bearer token, from admin_token or the first line of admin_token_file.

        ``ConfigError`` unless it is at least ``MIN_TOKEN_CHARS`` printable ASCII characters
        without spaces: a blank or short token would guard nothing, and a space would make
        ``authorization: Bearer <token>`` ambiguous.
        """
        if self.admin_token:
            return check_token(self.admin_token, "admin_token")
        if self.admin_token_file:
            token = _first_line(self.admin_token_file, "admin_token_file", "a token")
            return check_token(token, f"admin_token_file {self.admin_token_file}")
        return ""


def _first_line(path: str, option: str, what: str) -> str:
    """The first line of a secret's file, stripped; ``ConfigError`` naming ``option`` if there is none."""
    try:
        return Path(path).read_bytes().decode("utf-8").splitlines()[0].strip()
    except (OSError, IndexError, UnicodeDecodeError) as e:
        reason = "the file is empty" if isinstance(e, IndexError) else e
        raise ConfigError(f"{option}: cannot read {what} from {path}: {reason}") from None


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_address(value: str, option: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(f"{option}: {value!r} is not host:port")


def parse_option(name: str, text: str) -> Any:
    """One option's value from text (as a flag or the admin API gives it), fully checked."""
    fields = _fields()
    if name not in fields:
        raise ConfigError(f"unknown option {name!r}{did_you_mean(name, list(fields))}")
    return check_value(fields[name], _convert(name, text, from_text=True))


# --- sources ---------------------------------------------------------------------------------

def _fields() -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(PeerConfig)}


# Options never printed back (`--check-config` shows *** for them).
SECRET_OPTIONS = frozenset(name for name, f in _fields().items() if f.metadata["secret"])


def _convert(name: str, raw: Any, from_text: bool) -> Any:
    """Turn a file/env/flag value into the field's type, or raise ``ConfigError``."""
    kind = type(default_of(_fields()[name]))
    try:
        if kind is list:
            if isinstance(raw, str):
                return [s.strip() for s in raw.split(",") if s.strip()]
            if isinstance(raw, list) and all(isinstance(s, str) for s in raw):
                return list(raw)
            raise ValueError("expected a list of strings")
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            if from_text and str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if from_text and str(raw).lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError("expected true or false")
        if kind is float and isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        if kind is int and isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if kind is str and isinstance(raw, str):
            return raw
        if from_text and isinstance(raw, str):
            return kind(raw)
        raise ValueError(f"expected {kind.__name__}")
    except (ValueError, OverflowError) as e:  # OverflowError: an integer too large for a float
        shown = "the value" if _fields()[name].metadata.get("secret") else show(raw)
        raise ConfigError(f"{name}: cannot use {shown} ({str(e)[:80]})") from None


def from_file(path: str | Path) -> dict[str, Any]:
    """Options from a TOML file: top-level keys named like the fields (``[peer]`` table also accepted)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror or e}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: {e}") from None
    if isinstance(data.get("peer"), dict):
        data = {**{k: v for k, v in data.items() if k != "peer"}, **data["peer"]}
    fields = _fields()
    unknown = sorted(set(data) - set(fields))
    if unknown:
        hint = did_you_mean(unknown[0], list(fields)) if len(unknown) == 1 else ""
        raise ConfigError(f"config file {path}: unknown option(s) {', '.join(map(show, unknown))}{hint}")
    return {k: _convert(k, v, from_text=False) for k, v in data.items()}


def from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Options from ``HEARSAY_<NAME>`` variables (``HEARSAY_CONFIG`` names the file, not an option)."""
    out = {}
    for name in _fields():
        key = ENV_PREFIX + name.upper()
        if key in environ:
            out[name] = _convert(name, environ[key], from_text=True)
    return out


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--name`` flag per option, defaulting to ``None`` so unset flags do not override."""
    for name, f in _fields().items():
        if not f.metadata["flag"]:
            continue
        flag = "--" + name.replace("_", "-")
        default = default_of(f)
        help_text = f"{f.metadata['help']} (default: {default!r})"
        if isinstance(default, bool):
            parser.add_argument(flag, dest=name, default=None, action=argparse.BooleanOptionalAction,
                                help=help_text)
        elif isinstance(default, list):  # repeatable, and each occurrence may hold a comma-separated list
            parser.add_argument(flag, dest=name, default=None, action="append", metavar=name.upper(),
                                help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=help_text,
                                choices=f.metadata.get("choices"))
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="TOML config file (also HEARSAY_CONFIG); flags and environment override it.")


def from_flags(args: argparse.Namespace) -> dict[str, Any]:
    def raw(name: str) -> Any:
        value = getattr(args, name)
        return ",".join(value) if isinstance(value, list) else value  # repeated list flags join up
    return {name: _convert(name, raw(name), from_text=True)
            for name in _fields() if getattr(args, name, None) is not None}


def load(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> PeerConfig:
    """Build a validated config: defaults < file < environment < flags."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = (getattr(args, "config", None) if args is not None else None) or environ.get(ENV_PREFIX + "CONFIG")
    if path:
        values.update(from_file(path))
    values.update(from_env(environ))
    if args is not None:
        values.update(from_flags(args))
    return PeerConfig(**values).validate()
