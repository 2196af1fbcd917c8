"""The membership view: who this peer believes is in the swarm, and in what state.

Two implementations sit behind the same view (``members()``, ``live()``, ``get()``,
``add_seed``, ``note_contact``, ``note_failure``):

* ``Swim``, the daemon's default (``--membership swim``; carried over gRPC by
  ``peer/transport/membership_grpc.py``, driven by ``peer/runtime/membership.py``), is
  a SWIM + Lifeguard failure detector and dissemination protocol, after
  hashicorp/memberlist: it probes one member per period (round robin over a shuffled
  order), asks ``indirect_checks`` others to probe on a missed ack, suspects, lets the
  suspect refute with a higher incarnation, declares it dead after a Lifeguard
  suspicion timeout that shrinks with independent confirmations, slows its own
  detector through a local-health (awareness) score, piggybacks updates on every
  message with ~λ·log(n) retransmissions, syncs full state by push-pull, and leaves
  gracefully.
* ``StaticMembership`` (``--membership static``) fills the view from static seeds and
  inbound contacts and gives up on a member after repeated failed exchanges.

The package, one concern a module (the split of hashicorp/memberlist):

* ``states``: the view (``MemberState``, ``Source``, ``Member``) and ``StateCode``, the
  one definition of the compact state codes the table stores and the wire carries;
* ``config``: ``SwimConfig`` and the formulas (retransmissions, suspicion timeout,
  incarnation order, push-pull scaling);
* ``messages``: updates, messages and the machine's outputs (``Send``, ``Timer``);
* ``broadcast``: the queue of updates waiting to be piggybacked;
* ``suspicion``: one suspect's Lifeguard timer;
* ``table``: the member table (``AddressBook``, state arrays, admission, forgetting);
* ``rules``: how Alive, Suspect, Dead and Leave change the table;
* ``swim``: the machine (probe loop, gossip, push-pull, entry points);
* ``static``: ``StaticMembership``;
* ``wire``: the msgpack encoding of the messages (imported on its own, not re-exported).

Everything here is pure: no sockets, no clocks, no threads. Time arrives as ``now``
arguments, randomness from an injected ``random.Random``; every entry point returns the
list of ``Send`` (a message to deliver to an address) and ``Timer`` (call ``on_timer``
with it at ``timer.at``) the runtime must carry out. Timers are never cancelled: a timer
that no longer matters is ignored when it fires, which keeps the runtime trivial (a
heap in the simulator, ``loop.call_at`` in the daemon). A failed ``Send`` needs no
report: the protocol's own timeouts treat it as a lost message.

Choices where this deviates from, or pins down, memberlist (times in probe periods P):

* Suspicion timeout. memberlist uses ``min = SuspicionMult·max(1, log10 n)·P`` and
  ``max = SuspicionMaxTimeoutMult·min`` (4 and 6 on LAN), starting at ``max`` and
  shrinking towards ``min`` as ``k = SuspicionMult − 2`` independent confirmations
  arrive: ``t(c) = max − log(c+1)/log(k+1)·(max − min)``. We keep that curve and the
  floor, but start at ``suspicion_mult·ln(n+1)·P`` (issue 5's "4·log(n+1) periods")
  instead of 6·min: for 8 peers that is 8.8 P instead of 24 P, so a crash is declared
  within the issue's detection budget, while the floor (4 P at 8 peers, 12 P at 1,000)
  still leaves a live-but-slow suspect several dissemination rounds to refute.
* Local health scales both the probe interval and the direct probe timeout
  (Lifeguard's LHA-Probe); memberlist scales only the interval.
* The helper of an indirect probe is told how long it may wait before it nacks
  (``PingReq.nack_after``, a fraction of the requester's remaining probe time), so a
  nack arrives before the requester stops counting, whatever the probe period.
* Probe order: every pass walks the member table in a random affine permutation
  ``i ↦ (a·i + b) mod m`` — each member exactly once per pass, a fresh order each pass —
  which costs O(1) memory per node instead of a shuffled copy of the member list.
* Reconnect (from Serf, not memberlist): every ``reconnect_interval`` a node push-pulls
  with one member it believes dead, so two halves of a healed partition find each other
  again. A member that hears from a node it holds dead attaches that ``Dead`` to its
  answer, so a paused node learns it was declared dead and refutes at once.
* No TCP fallback ping: the runtime's transport (gRPC) is already a stream protocol.
* Remote ``dead`` entries in a push-pull are merged as ``suspect`` (as memberlist
  does), so a stale full state can never bury a live node outright.

What one message from a stranger can do is bounded (issue 14; memberlist trusts its
cluster and leaves this to its keyring — these rules hold without one):

* Incarnations are serial numbers modulo 2**32 (RFC 1982) instead of saturating at
  2**32−1, so no claim can pin a member where its refutation cannot outbid it; and a
  claim more than ``incarnation_window`` (1,024) ahead of the incarnation we hold is
  not believed. Honest incarnations rise by one per refutation, so only a forgery
  jumps that far, and the window keeps every comparison far inside the half range.
* A ``Dead`` from anyone but ourselves is an accusation, not a burial: it starts (or
  confirms) our own Lifeguard suspicion and cuts it to its floor, measured from when
  *we* first accused the member. The member keeps at least the floor to refute, as
  memberlist guarantees, and only our own timer declares it dead. When the prober's
  ``Dead`` arrives, the others have held the same suspicion for about as long, so
  detection stays as fast. Only accusers we hold live count as confirmations.
* New members learned from someone else ("hearsay": a gossiped ``Alive``, a row of a
  push-pull, a model packet's claimed sender address) count against that sender's
  ``hearsay_quota`` (64) until the member answers us on a connection we opened (its
  ack to our probe, its reply to our push-pull, a model exchange we started): a
  message that merely names a source proves nothing. The answer to our own join is
  exempt. One forged full state of 66,000 members adds 64, and an honest partner
  takes at most 64 of them from each neighbour that passes them on.
* Every path into the table respects ``max_members`` (a full table gives up its
  longest-dead member for a newcomer); the member count is kept, not recounted (the
  old count per new member made a 66,000-row push-pull take 43 s).
* Left members, and dead members that never answered us, are forgotten
  ``gossip_to_the_dead_time`` (memberlist: 30 s) after they went; other dead members
  after ``reconnect_timeout`` (Serf keeps them 24 h for reconnects; here 3,600 periods).
  A private address book recycles the forgotten names' slots.
* ``on_message(..., max_rows=)`` merges a full state a bounded number of rows at a time
  (``merge_more`` / ``more_states`` continue it), so the runtime never stalls on one.

Left as it is: a ``Leave`` is still believed from anyone (a graceful leave must spread
within a period or two); the member refutes it as soon as it hears it. Authenticating
the sender of a ``Leave`` is the keyring's job.
"""

from __future__ import annotations

from protocol.membership.broadcast import (
    BroadcastQueue,
)
from protocol.membership.config import (
    MAX_INCARNATION,
    SwimConfig,
    incarnation_ahead,
    push_pull_scale,
    retransmit_limit,
    suspicion_bounds,
    suspicion_timeout,
)
from protocol.membership.messages import (
    Ack,
    Alive,
    Dead,
    Gossip,
    Leave,
    MemberEntry,
    Message,
    Nack,
    Output,
    Ping,
    PingReq,
    PushPull,
    Send,
    Suspect,
    Timer,
    TimerKind,
    Update,
)
from protocol.membership.states import (
    Member,
    MemberState,
    MembershipView,
    Source,
    StateCode,
)
from protocol.membership.static import (
    StaticMembership,
    StaticMembershipConfig,
)
from protocol.membership.swim import (
    GOSSIP_PATH,
    Swim,
)
from protocol.membership.table import (
    AddressBook,
    Observer,
)

__all__ = [
    "Ack",
    "AddressBook",
    "Alive",
    "BroadcastQueue",
    "Dead",
    "GOSSIP_PATH",
    "Gossip",
    "Leave",
    "MAX_INCARNATION",
    "Member",
    "MemberEntry",
    "MemberState",
    "MembershipView",
    "Message",
    "Nack",
    "Observer",
    "Output",
    "Ping",
    "PingReq",
    "PushPull",
    "Send",
    "Source",
    "StateCode",
    "StaticMembership",
    "StaticMembershipConfig",
    "Suspect",
    "Swim",
    "SwimConfig",
    "Timer",
    "TimerKind",
    "Update",
    "incarnation_ahead",
    "push_pull_scale",
    "retransmit_limit",
    "suspicion_bounds",
    "suspicion_timeout",
]
