"""Hostile peers in the simulator (issue 7): what an attacker sends instead of its own model.

``SimConfig.attack`` and ``attackers`` turn chosen peers into attackers that follow the
protocol (they train, exchange and merge through their ``GossipEngine``) but send
poisoned models (``ATTACKS`` in ``peer.sim.config``), or train on flipped labels. The
attacker's engine frames the poisoned model for its victim as it would its own
(``AttackerEngine``): keyframes, deltas against the link's replica, the same wire.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from peer.data import Dataset
from peer.runtime.gossip import GossipEngine
from peer.sim.config import DEFAULT_ATTACK_SCALE, HUGE_COUNT, SimConfig
from peer.runtime.trainer import Trainer
from peer.runtime.validation import Validator, make_validator
from protocol.merge import LossCheckedRule, MergeRule, delta_norm
from protocol.wire import Buffer

if TYPE_CHECKING:
    from peer.sim.virtual_peer import VirtualPeer


class PoisoningTrainer:
    """A trainer whose ``state()`` is, while ``victim`` is set, the model to send that victim."""

    def __init__(self, trainer: Trainer, poison: Callable[[str], dict[str, np.ndarray]]) -> None:
        self._trainer = trainer
        self._poison = poison
        self.victim: str | None = None

    def state(self) -> dict[str, np.ndarray]:
        return self._trainer.state() if self.victim is None else self._poison(self.victim)

    def live(self) -> tuple[Any, Any]:
        """The real model, live, or (while ``victim`` is set) the poisoned one, a snapshot."""
        return self._trainer.live() if self.victim is None else (self._poison(self.victim), None)

    def __getattr__(self, name: str) -> Any:  # everything else is the real trainer's
        return getattr(self._trainer, name)


class AttackerEngine(GossipEngine):
    """The daemon's engine, framing a poisoned model for whichever partner a packet goes to.

    ``rotate``: every packet speaks for a new address (``<address>#<n>``; in process the
    claim is the identity, as a fresh connection from a new host would be), always as a
    keyframe, since the victim holds no replica of a new identity. ``claim_samples``: the
    sample count every header claims instead of the real one.
    """

    rotate = False
    claim_samples: int | None = None
    _rotations = 0

    def own_packet_parts(self, link: str, commit: bool = True, samples: int | None = None,
                         one_way: bool = False) -> list[Buffer]:
        proxy = self.trainer
        assert isinstance(proxy, PoisoningTrainer)
        proxy.victim = link
        address = self.address
        if self.rotate:
            self._rotations += 1
            self.address = f"{address}#{self._rotations}"
            self.sender.invalidate(link)
        try:
            return super().own_packet_parts(link, commit, self.claim_samples if self.claim_samples else samples,
                                            one_way)
        finally:
            proxy.victim = None
            self.address = address


def configure_attacker(engine: AttackerEngine, attack: str) -> None:
    """Set the header claims of ``attack`` on an attacker's engine (see ``ATTACKS``)."""
    engine.rotate = attack == "rotate"
    engine.claim_samples = HUGE_COUNT if attack == "huge-count" else None


class AttackerMixin:
    """The attacks and validators of ``peer.sim.swarm.Simulator``, whose fields these are."""

    config: SimConfig
    data: Dataset
    peers: list[VirtualPeer]
    rules: list[MergeRule]
    honest: list[int]
    attackers: frozenset[int]
    validation: list[np.ndarray]
    _scratch: nn.Module
    _noise: np.random.Generator


    def _setup_attackers(self) -> None:
        """Label-flip attackers train on ``C − 1 − label``; validators see each peer's validation split."""
        classes = self.data.num_classes
        for i in self.attackers:
            if self.config.attack == "label-flip":
                t = self.peers[i].trainer
                t.train_y = (classes - 1) - t.train_y
        if self.config.validate:
            for p, rule in zip(self.peers, self.rules):
                if isinstance(rule, LossCheckedRule):
                    rule.validator = self._validator(p)

    def _validator(self, peer: VirtualPeer) -> Validator:
        """Loss of a model on ``peer``'s validation split (its held-out samples, true labels;
        its training shard when nothing is held out), as the daemon's ``peer.runtime.validation``."""
        idx = self.validation[peer.index]
        return make_validator(self._scratch, torch.as_tensor(self.data.train_x[idx]),
                              torch.as_tensor(self.data.train_y[idx]))

    def _scale(self) -> float:
        return self.config.attack_scale or DEFAULT_ATTACK_SCALE.get(self.config.attack, 1.0)

    def _poisoned(self, attacker: VirtualPeer, victim: VirtualPeer) -> dict[str, np.ndarray]:
        """The model ``attacker`` sends ``victim`` instead of its own (see ``ATTACKS``)."""
        own = attacker.trainer.state()
        kind, k = self.config.attack, self._scale()
        if kind in ("sign-flip", "rotate", "huge-count"):
            return {n: (-k * x).astype(x.dtype) if x.dtype.kind == "f" else x for n, x in own.items()}
        if kind == "noise":
            return {n: (x + k * math.sqrt(float(np.mean(np.square(x, dtype=np.float64)))) *
                        self._noise.standard_normal(x.shape)).astype(x.dtype) if x.dtype.kind == "f" else x
                    for n, x in own.items()}
        if kind in ("small-shift", "loss-shift"):
            target = victim.trainer.state()
            direction = self._ascent(attacker, target)
            r = k * self._victim_bound(victim, target)
            if kind == "loss-shift":
                r = self._most_taken(victim, target, direction, r)
            return _moved(target, direction, r)
        raise ValueError(f"attack {kind!r} sends no poisoned model")

    def _most_taken(self, victim: VirtualPeer, state: dict[str, np.ndarray], direction: dict[str, np.ndarray],
                    r_max: float) -> float:
        """The step along ``direction`` (of ``r_max · 2^−i``, i = 0..12) of which the victim's loss
        check takes the most (``trust × step``); ``r_max`` when the victim has no loss check, 0 when
        no step passes (the attacker then sends the victim's own model and keeps its reputation)."""
        rule = self.rules[victim.index]
        check = rule.loss_check if isinstance(rule, LossCheckedRule) else None
        if check is None:
            return r_max
        limit = check.limit()
        steps = [r_max * 0.5 ** i for i in range(13)]
        rises = check.rises(state, [_moved(state, direction, r) for r in steps])
        taken = [(check.trust(rise, limit) * r if rise <= limit else 0.0, r) for rise, r in zip(rises, steps)]
        best, r = max(taken)
        return r if best > 0 else 0.0

    def _victim_bound(self, victim: VirtualPeer, state: dict[str, np.ndarray]) -> float:
        """The victim rule's current clipping/outlier bound, or 2 × its median distance to honest peers."""
        bound = getattr(self.rules[victim.index], "bound", None)
        if callable(bound):
            return float(bound(state))
        dists = [delta_norm(state, self.peers[j].trainer.state()) for j in self.honest if j != victim.index]
        return 2.0 * float(np.median(dists)) if dists else 0.0

    def _ascent(self, attacker: VirtualPeer, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Unit-norm gradient of the loss at ``state`` on the attacker's shard (true labels)."""
        model = self._scratch
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
        model.train()
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(attacker.trainer.train_x), attacker.trainer.train_y).backward()
        grads = {n: p.grad.detach().numpy().astype(np.float64) for n, p in model.named_parameters()
                 if p.grad is not None}
        norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
        return {n: g / norm for n, g in grads.items()} if norm > 0 else {}


def _moved(state: dict[str, np.ndarray], direction: dict[str, np.ndarray], r: float) -> dict[str, np.ndarray]:
    """``state + r · direction`` on the tensors ``direction`` has (the parameters)."""
    return {n: (x + r * direction[n]).astype(x.dtype) if n in direction else x for n, x in state.items()}

