"""Room for an incoming keyframe: the copy of the sender's model that it replaces is dropped as
soon as the packet's header has arrived, not after the whole keyframe has been received.

Why: a receiver holds, per link, its copy of the partner's model (``protocol.feedback.Receiver``).
A keyframe replaces that copy; received into its own buffer while the old copy still lives,
it made every keyframe exchange hold the model twice over at its peak (bench/RESULTS.md,
"Memory an exchange adds": the remaining 1.0-1.5x of must-hold 3). The transport calls these
hooks with the first frame of a packet (``peer.transport.frames.read_packet``'s ``on_head``);
``protocol.wire.peek_header`` reads the header from it. The keyframe is then reassembled into the
dropped copy's own buffer when nothing else views it any more (``mmap.resize`` refuses while any
view is alive): no second model-sized mapping, and no page faulted in afresh.

The rule for a keyframe that is then refused (malformed, replayed, too slow...): the copy is
gone, which is exactly what the refusal of a keyframe on the same link costs anyway once the
partner restarts it; the partner's next delta finds no copy (``NeedKeyframe("unknown_link")``)
and our answer asks for a keyframe, so the link restarts. Because the drop happens before the
packet is authenticated, it is done only for a caller the connection itself proves may speak
for the sender's address (its certificate owns the address, or, with no keyring, the address's
host is the caller's); a keyed caller without a certificate is verified only once the whole
packet is in, so its keyframes are received next to the copy, as before.
"""

from __future__ import annotations

import mmap
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from peer.transport.identity import Caller, Impersonation, needs_lookup, tie_to_host
from protocol.errors import Refusal
from protocol.wire import Buffer, PacketHeader, peek_header

if TYPE_CHECKING:  # pragma: no cover - typing only (the engine wires these hooks, not the reverse)
    from peer.runtime.gossip import GossipEngine


def _replacing_keyframe(engine: GossipEngine, head: Buffer) -> PacketHeader | None:
    """The header of a keyframe of our model from another peer, or None."""
    header = peek_header(head, engine.limits)
    if header is None or not (header.keyframe and header.carries_model):
        return None
    if header.fingerprint != engine.fingerprint or header.sender_id == engine.peer_id:
        return None
    return header


def _may_speak_for(engine: GossipEngine, claimed: str, caller: Caller | str) -> bool:
    """Whether the connection alone (no packet tag, no name lookup) proves ``claimed``."""
    if isinstance(caller, str):
        return True  # an in-process caller (tests, the simulator): its claim stands
    if caller.certificate:
        return engine.owners.get(claimed) == caller.certificate
    if caller.authenticated or needs_lookup(claimed, caller):
        return False  # keyed: the tag is checked only once the whole packet is in
    try:
        tie_to_host(claimed, caller, engine.resolver)
    except Impersonation:
        return False
    return True


def _backing_map(copy: Mapping[str, np.ndarray] | None) -> mmap.mmap | None:
    """The mapping a copy's arrays view: the buffer of the keyframe it was adopted from."""
    for x in (copy or {}).values():
        base: object = x
        while isinstance(base, np.ndarray) and base.base is not None:
            base = base.base
        if isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap):
            return base.obj
    return None


def _drop(engine: GossipEngine, link: str) -> mmap.mmap | None:
    """Forget ``link``'s copy; its buffer, to reassemble the keyframe into, when nothing else
    views it any more (a merge still reading it, a batch merge holding it: then it is left to
    them, and the keyframe goes into fresh memory)."""
    room = _backing_map(engine.receiver.replica(link))
    engine.receiver.forget(link)
    if room is None:
        return None
    try:
        room.resize(len(room))  # refused while any view of it is alive: nobody else sees the bytes
    except BufferError:
        return None
    return room


def make_room_inbound(engine: GossipEngine, head: Buffer, caller: Caller | str) -> mmap.mmap | None:
    """The callee's hook: a partner's keyframe is arriving; drop our copy of its model now
    (only when the exchange would go ahead: not a newcomer's fetch, not a link in use, not a
    banned or unproven sender, not a keyframe the replay guard refuses)."""
    header = _replacing_keyframe(engine, head)
    if header is None or header.samples == 0:
        return None
    link = header.sender_addr
    if engine.receiver.replica(link) is None or engine.link_busy(link):
        return None
    if not _may_speak_for(engine, link, caller) or engine.defence.is_banned(engine.who(link)):
        return None
    try:  # a replayed or stale keyframe (the guard refuses it later) must not cost the link its copy
        engine.replay_guard.check(link, header.link_epoch, header.link_seq, header.model_version)
    except Refusal:
        return None
    return _drop(engine, link)


def make_room_for_reply(engine: GossipEngine, link: str, head: Buffer) -> mmap.mmap | None:
    """The caller's hook: the partner we called answers with a keyframe; drop our copy of its
    model now (we hold the link's lock for the whole exchange)."""
    if _replacing_keyframe(engine, head) is None or engine.receiver.replica(link) is None:
        return None
    return _drop(engine, link)
