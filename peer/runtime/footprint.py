"""What a running peer's steady state holds in memory, by component (issue 12, item 3).

Between exchanges a peer holds four kinds of model-sized state:

* the model (parameters and buffers, on the training device);
* the optimizer's state (SGD with momentum: one buffer per parameter, 1x the model; with
  drift_correction a control variate per parameter more, 2x);
* sender replicas: per link, what that partner holds of our model (protocol/feedback.py);
* receiver copies: per link, our copy of that partner's model.

Replicas and copies are kept for at most ``max_links`` links each (least recently used
evicted), and each is at most one model, so the steady state is bounded by

    model + optimizer + 2 * max_links * model

whatever the swarm's size. A fifth component exists only with ``--fanout`` above 1 or a
batch rule (median, trimmed): the models received since the last merge, a snapshot each
(``pending``; at most one per sender, emptied by every batch merge). It is reported, not
in the bound: how many senders call between two merges is up to the swarm. An exchange adds transient buffers on top (the packet being
received; merges and deltas work in place), which bench/transport.py measures.
"""

from __future__ import annotations

from dataclasses import dataclass

from peer.runtime.gossip import GossipEngine


@dataclass(frozen=True)
class Footprint:
    """Bytes held, by component; per link for replicas and copies."""

    model: int
    optimizer: int
    sender: dict[str, int]    # link -> bytes of its sender replica
    receiver: dict[str, int]  # link -> bytes of its receiver copy
    max_links: int
    pending: int = 0          # models buffered for the next batch merge (fanout > 1, batch rules)

    @property
    def sender_total(self) -> int:
        return sum(self.sender.values())

    @property
    def receiver_total(self) -> int:
        return sum(self.receiver.values())

    @property
    def total(self) -> int:
        return self.model + self.optimizer + self.sender_total + self.receiver_total + self.pending

    @property
    def bound(self) -> int:
        """The most the steady state can hold: ``model + optimizer + 2 * max_links * model``."""
        return self.model + self.optimizer + 2 * self.max_links * self.model


def footprint(engine: GossipEngine) -> Footprint:
    """The steady-state memory of the peer ``engine`` runs (read without stopping training)."""
    trainer = engine.trainer
    model = sum(t.numel() * t.element_size() for t in trainer.model.state_dict().values())
    optimizer = 0
    # A snapshot of the state's values: the trainer thread adds entries on its first step.
    for state in list(trainer.optimizer.state.values()):
        for value in list(state.values()):
            if hasattr(value, "element_size"):
                optimizer += value.numel() * value.element_size()
    return Footprint(model=model, optimizer=optimizer, sender=engine.sender.held_bytes(),
                     receiver=engine.receiver.held_bytes(), max_links=engine.max_links,
                     pending=engine.defence.pending_bytes())
