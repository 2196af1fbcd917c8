"""What an engine counts: per link, and for the whole peer (Status, ListPeers, metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LinkStats:
    """What happened between this peer and one other, as this peer saw it."""

    exchanges: int = 0
    merges: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    failures: int = 0
    # Round trip of the last successful exchange we started with this peer (seconds).
    rtt: float | None = None


@dataclass
class GossipStats:
    exchanges: int = 0
    exchanges_out: int = 0  # of which this peer was the initiator
    merges: int = 0
    rejected: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    # fp32 size of the model / size of the last packet sent (1.0 for the fp32 codec).
    compression_ratio: float = 0.0
    keyframes_sent: int = 0
    # Link updates we could not apply, by reason (protocol.feedback.NeedKeyframe).
    keyframe_requests: dict[str, int] = field(default_factory=dict)
    # Membership transitions this peer observed.
    suspicions: int = 0
    deaths: int = 0
    # Partners chosen, and of them members not confirmed by an answer to us (their share is
    # capped: protocol.sampling.UNCONFIRMED_SHARE).
    partner_picks: int = 0
    partner_picks_unconfirmed: int = 0
    # Exchanges this peer answered while their request was still arriving (the reply streaming
    # as the request's tail came in: peer/transport/answering.py), and the reply bytes that had
    # gone by the time the request was whole.
    answered_early: int = 0
    early_reply_bytes: int = 0
