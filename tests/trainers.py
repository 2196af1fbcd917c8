"""Trainers built the way a peer builds its own, for tests that compare against a lone peer."""

from __future__ import annotations

from peer.runtime.config import PeerConfig
from peer.runtime.node import build_trainer_and_validation
from peer.runtime.trainer import Trainer


def build_trainer(config: PeerConfig) -> Trainer:
    """Data shard, model and optimiser of a peer started with ``config``, all seeded from it."""
    return build_trainer_and_validation(config)[0]
