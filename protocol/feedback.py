"""Per-link replicas: keyframe + compressed deltas with error feedback (CHOCO / EF21).

For every link the sender keeps ``x̂``, an exact copy of what the receiver holds of
the sender's model. It sends ``C(x − x̂)`` and then applies to ``x̂`` the *decoded*
message, exactly as the receiver will, so both copies stay bit-identical and the
compression error ``(x − x̂) − C(x − x̂)`` is not lost: it is still in ``x − x̂`` and
goes out with the next delta. That is what lets a biased compressor (top-k) converge.

A link starts, and restarts after any doubt, with a keyframe: the dense model
(through ``keyframe_policy``, e.g. fp16; the replica then holds the rounded model and
the deltas correct the rounding). Every link update (``LinkUpdate``: a keyframe or a
delta) carries ``(epoch, seq)``: the epoch names one keyframe-started lineage of the
sender's replica, ``seq`` counts updates in it. The receiver applies a delta only onto
the same epoch at ``seq = last + 1``; anything else (a lost update, a reordered one, a
sender that restarted or evicted the link, a receiver that evicted it, a changed model
architecture) answers ``NeedKeyframe`` and the sender starts a new epoch. Both sides keep
at most ``max_links`` replicas, least recently used evicted first.

Float tensors travel as deltas; non-float tensors (counters, masks) cannot be
subtracted meaningfully, so every update carries their value, exactly, with ``raw``.

Pure and synchronous: no I/O, no clock. Callers serialise calls for the same link
(one exchange at a time per partner); calls for different links may run in
different threads.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np

from protocol.codecs import SizeAdaptive, get, make
from protocol.codecs.base import Encoded, Policy, SparseTensor

Model = Mapping[str, np.ndarray]
# What a received update's tensors may be: dense arrays, or a sparse codec's entries as sent.
Update = Mapping[str, np.ndarray | SparseTensor]
# A context in which the model's tensors hold still (the trainer's model lock): a live model
# is read a tensor at a time inside it, so no copy of the whole model is ever made.
Guard = Callable[[], AbstractContextManager[object]]
Spec = tuple[tuple[str, tuple[int, ...], str], ...]


def spec_of(model: Model) -> Spec:
    """Names, shapes and dtypes in model order: what must match for a delta to apply.

    A live model whose tensors are copied when read (one on a GPU) may carry its spec as a
    ``spec`` attribute, so that reading it copies nothing."""
    carried = getattr(model, "spec", None)
    if carried is not None:
        return carried
    return tuple((name, tuple(int(d) for d in x.shape), np.dtype(x.dtype).name) for name, x in model.items())


@dataclass(frozen=True)
class LinkUpdateHeader:
    """What identifies a link update on its link; travels in the packet header."""

    epoch: int
    seq: int
    keyframe: bool


@dataclass(frozen=True)
class EncodedTensor:
    """One tensor of an update: the codec that encoded it and its output."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    codec: str
    encoded: Encoded


@dataclass(frozen=True)
class LinkUpdate:
    """One encoded model update sent on one link — a keyframe (the dense model) or an
    error-feedback delta — as the sender puts it on the wire: header + tensors in model order."""

    header: LinkUpdateHeader
    tensors: tuple[EncodedTensor, ...]

    @property
    def payload_bytes(self) -> int:
        return sum(len(t.encoded.payload) for t in self.tensors)

    def shapes(self) -> dict[str, np.ndarray]:
        """Each tensor's name, shape and dtype as an array that holds no memory (zero strides):
        what ``protocol.wire.encode_packet_parts`` reads of a model besides the encodings, so
        the packet is framed without the model itself."""
        return {t.name: np.broadcast_to(np.zeros((), np.dtype(t.dtype)), t.shape) for t in self.tensors}

    def chooser(self) -> Callable[[str, np.ndarray], _Replay]:
        """A ``protocol.wire.CodecChooser`` that frames this update's encodings as they are:
        ``encode_packet(header, model, update.chooser())`` puts on the wire exactly what
        ``prepare`` encoded (and applied to ``x̂``), without encoding anything twice."""
        by_name = {t.name: _Replay(t) for t in self.tensors}
        return lambda name, _x: by_name[name]


class _Replay:
    """Looks like a codec to ``encode_packet``; its "encoding" is the one already made."""

    def __init__(self, tensor: EncodedTensor) -> None:
        self.name = tensor.codec
        self._encoded = tensor.encoded

    def supports(self, dtype: np.dtype) -> bool:
        return True

    def encode(self, x: np.ndarray) -> Encoded:
        return self._encoded


@dataclass(frozen=True)
class Applied:
    """The update was applied; ``model`` is the receiver's (read-only) copy of the sender's
    model, valid until the next update on this link is accepted."""

    model: Mapping[str, np.ndarray]
    keyframe: bool


@dataclass(frozen=True)
class NeedKeyframe:
    """The update cannot be applied; ask the sender for a keyframe. ``reason`` is a short
    stable label (for metrics): ``unknown_link``, ``epoch``, ``gap``, ``stale``, ``spec``,
    ``non_finite`` (the delta would overflow the copy)."""

    reason: str


AcceptResult = Applied | NeedKeyframe


def _decode(t: EncodedTensor) -> np.ndarray:
    """Decode with the *registered* codec of the name, exactly as the receiver will."""
    return get(t.codec).decode(t.encoded.payload, t.shape, np.dtype(t.dtype), t.encoded.params)


def _decode_delta(t: EncodedTensor) -> np.ndarray | SparseTensor:
    """``_decode``, but a sparse codec's entries as they are (``add_delta`` adds them in place)."""
    codec = get(t.codec)
    if hasattr(codec, "decode_sparse"):
        return codec.decode_sparse(t.encoded.payload, t.shape, np.dtype(t.dtype), t.encoded.params)
    return codec.decode(t.encoded.payload, t.shape, np.dtype(t.dtype), t.encoded.params)


def add_delta(hat: np.ndarray, delta: np.ndarray | SparseTensor) -> None:
    """``hat += delta`` in place; a sparse delta without its dense zeros, with the same bits.
    Sender and receiver both apply deltas through this, so their replicas stay identical."""
    if isinstance(delta, SparseTensor):
        delta.add_into(hat)
    else:
        np.add(hat, delta, out=hat)


def _dense(x: np.ndarray | SparseTensor) -> np.ndarray:
    return x.dense() if isinstance(x, SparseTensor) else x


def _own(x: np.ndarray) -> np.ndarray:
    """A writable array that owns its memory (decoded arrays may view read-only payloads)."""
    return np.array(x, copy=True, order="C")


# Codecs whose payload is exactly the tensor's little-endian bytes, by the dtypes they keep exact.
_EXACT_CODECS = {"fp32": ("float32",), "raw": None}


def _lendable(codec: str, x: np.ndarray) -> bool:
    """Whether ``codec``'s payload for ``x`` is ``x``'s own memory, byte for byte (so a
    keyframe can send the array itself, and the array is exactly what is decoded)."""
    if codec not in _EXACT_CODECS or not isinstance(x, np.ndarray):
        return False
    dtypes = _EXACT_CODECS[codec]
    if dtypes is not None and x.dtype.name not in dtypes:
        return False
    return (x.flags.c_contiguous and x.flags.writeable and x.dtype.byteorder in "=<|"
            and np.little_endian and x.dtype.kind in "fiub")


def _sums_stay_finite(replica: Mapping[str, np.ndarray], deltas: Update) -> bool:
    """Whether ``replica + delta`` is finite everywhere, checked before anything is changed.

    Finite values can still overflow when added (3e38 + 3e38 in float32). The cheap bound
    ``max|x̂| + max|Δ|`` clears almost every update; only near the edge is the sum computed.
    """
    for name, d in deltas.items():
        hat = replica[name]
        if hat.dtype.kind != "f" or d.size == 0:
            continue
        limit = float(np.finfo(hat.dtype).max)
        entries = d.values if isinstance(d, SparseTensor) else d
        if float(np.max(np.abs(hat))) + float(np.max(np.abs(entries), initial=0.0)) < limit:
            continue
        if isinstance(d, SparseTensor):  # only the entries move their elements (x + 0 stays finite)
            sums = np.add(hat.reshape(-1)[d.indices], d.values, dtype=hat.dtype)
        else:
            sums = np.add(hat, d, dtype=hat.dtype)
        if not np.isfinite(sums).all():
            return False
    return True


def _adoptable(x: np.ndarray) -> bool:
    """A writable, contiguous array that can be kept as a replica as it is (it may be
    unaligned inside a packet buffer; numpy handles that)."""
    return isinstance(x, np.ndarray) and x.flags.writeable and x.flags.c_contiguous


def _readonly(model: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    views = {}
    for name, x in model.items():
        v = x.view()
        v.flags.writeable = False
        views[name] = v
    return views


class _Lru:
    """At most ``capacity`` entries, least recently used evicted; thread-safe map ops."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"max_links must be at least 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> object | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: str, item: object) -> None:
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def peek(self, key: str) -> object | None:
        """Like ``get`` but without counting as a use."""
        with self._lock:
            return self._items.get(key)

    def pop(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._items)

    def held_bytes(self) -> dict[str, int]:
        """key -> bytes of the arrays its item's ``replica`` holds."""
        with self._lock:
            items = list(self._items.items())
        return {key: sum(x.nbytes for x in getattr(item, "replica", {}).values()) for key, item in items}


@dataclass
class _SenderLink:
    epoch: int
    seq: int
    spec: Spec
    replica: dict[str, np.ndarray]


class Sender:
    """The sending side of every link: keeps ``x̂`` per link, produces updates.

    ``policy`` chooses the codec of each delta tensor, ``keyframe_policy`` that of each
    keyframe tensor (default: fp32 for floats, raw otherwise). ``rng`` draws epochs; pass
    a seeded one for reproducible tests.
    """

    def __init__(self, policy: Policy, *, keyframe_policy: Policy | None = None, max_links: int = 16,
                 rng: random.Random | None = None, feedback: bool = True) -> None:
        self.policy = policy
        # feedback=False is the baseline without error feedback (p2pfl-style): the sender
        # assumes the receiver got its model exactly, so each compression error is dropped
        # for good and the receiver's copy drifts. Kept to measure what feedback buys.
        self.feedback = feedback
        self.keyframe_policy = keyframe_policy or SizeAdaptive(make("fp32"))
        self._links = _Lru(max_links)
        # link -> the replica change of an update sent but not yet known to be applied.
        self._pending: dict[str, Callable[[], None]] = {}
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()

    def _new_epoch(self) -> int:
        with self._rng_lock:
            return self._rng.getrandbits(63)

    def prepare(self, link: str, model: Model, *, commit: bool = True, adopt: bool = False,
                live: Guard | None = None) -> LinkUpdate:
        """The update to send on ``link`` for the current ``model``.

        ``adopt=True`` hands ``model``'s arrays over (the caller made them for this call
        and never touches them again): a keyframe then lends them to the update as its
        payload and keeps them as ``x̂`` wherever the keyframe codec is exact, instead of
        two copies of the whole model.

        ``live`` says ``model`` is the running model itself (views of its tensors, which
        training changes in place) and gives the context in which they hold still. A delta
        is then computed a tensor at a time from the live tensors (``x − x̂`` inside the
        context, encoded outside it): no copy of the whole model, and training waits for one
        subtraction at a time, not for the encoding. Its tensors may come from consecutive
        training steps; that changes nothing for the link, since ``x̂`` moves by the decoded
        update, whatever ``x`` it came from. A keyframe copies the model inside one context
        (a consistent snapshot, which becomes ``x̂``).

        With ``commit=True`` ``x̂`` is updated at once, as if the update was delivered (the
        answering side of an exchange, which never learns the outcome). With
        ``commit=False`` the update waits for ``commit(link)`` — the initiator calls it once
        the partner answered — or is dropped by ``discard(link)`` when the partner is known
        not to have applied the update; when the outcome is unknown, ``invalidate(link)``.
        """
        spec = spec_of(model)
        state = self._links.get(link)
        if not isinstance(state, _SenderLink) or state.spec != spec:
            if live is not None:
                with live():
                    model, adopt = {name: _own(x) for name, x in model.items()}, True
            update, apply = self._keyframe(link, model, spec, adopt)
        else:
            update, apply = self._delta(state, model, live or contextlib.nullcontext)
        self._pending.pop(link, None)
        if commit:
            apply()
        else:
            self._pending[link] = apply
        return update

    def commit(self, link: str) -> None:
        """The partner applied the last uncommitted update: update ``x̂`` as it did."""
        apply = self._pending.pop(link, None)
        if apply is not None:
            apply()

    def discard(self, link: str) -> None:
        """The partner refused the last uncommitted update before applying it: forget it,
        ``x̂`` stays what the partner still holds, and the next update reuses its sequence."""
        self._pending.pop(link, None)

    def _delta(self, state: _SenderLink, model: Model, hold: Guard) -> tuple[LinkUpdate, Callable[[], None]]:
        seq = state.seq + 1
        tensors = []
        # Without feedback the sender believes the receiver now holds x exactly.
        exact: dict[str, np.ndarray] | None = None if self.feedback else {}
        for name in model:
            hat = state.replica[name]
            with hold():
                x = model[name]
                if exact is not None:
                    exact[name] = _own(x)
                if np.dtype(x.dtype).kind != "f":
                    x = _own(x)  # sent as it is: a copy of a few counters
                    diff = None
                else:
                    diff = np.subtract(x, hat, dtype=hat.dtype)
            if diff is not None:
                codec = self.policy(name, diff)
                enc = EncodedTensor(name, hat.shape, hat.dtype.name, codec.name, codec.encode(diff))
                del diff
            else:
                codec = self.keyframe_policy(name, x)
                enc = EncodedTensor(name, hat.shape, hat.dtype.name, codec.name, codec.encode(x))
            tensors.append(enc)

        def apply() -> None:
            if state.seq != seq - 1:
                return  # the link moved on (or restarted) in between: nothing to apply
            for enc in tensors:
                hat = state.replica[enc.name]
                if hat.dtype.kind == "f":
                    if exact is not None:
                        hat[...] = exact[enc.name]
                    else:
                        add_delta(hat, _decode_delta(enc))
                else:
                    hat[...] = _decode(enc)
            state.seq = seq

        return LinkUpdate(LinkUpdateHeader(state.epoch, seq, keyframe=False), tuple(tensors)), apply

    def _keyframe(self, link: str, model: Model, spec: Spec, adopt: bool = False
                  ) -> tuple[LinkUpdate, Callable[[], None]]:
        tensors: list[EncodedTensor] = []
        adopted: dict[str, np.ndarray] = {}
        for name, x in model.items():
            codec = self.keyframe_policy(name, x)
            shape, dtype = tuple(int(d) for d in x.shape), np.dtype(x.dtype).name
            if adopt and _lendable(codec.name, x):
                # The wire bytes of an exact codec are the array's own bytes: send them from
                # the array and keep the array itself as x̂ (what the receiver will decode).
                tensors.append(EncodedTensor(name, shape, dtype, codec.name, Encoded(memoryview(x).cast("B"))))
                adopted[name] = x
            else:
                tensors.append(EncodedTensor(name, shape, dtype, codec.name, codec.encode(x)))
        epoch = self._new_epoch()

        def apply() -> None:
            replica = {t.name: adopted[t.name] if t.name in adopted else _own(_decode(t)) for t in tensors}
            self._links.put(link, _SenderLink(epoch=epoch, seq=0, spec=spec, replica=replica))

        return LinkUpdate(LinkUpdateHeader(epoch, 0, keyframe=True), tuple(tensors)), apply

    def replica(self, link: str) -> Mapping[str, np.ndarray] | None:
        """A read-only view of what this sender believes ``link``'s receiver holds."""
        state = self._links.peek(link)
        return _readonly(state.replica) if isinstance(state, _SenderLink) else None

    def invalidate(self, link: str) -> None:
        """Forget ``link``'s replica: the receiver asked for a keyframe, or an update may have
        been lost. The next ``prepare`` for it sends a keyframe with a new epoch."""
        self._pending.pop(link, None)
        self._links.pop(link)

    def links(self) -> list[str]:
        """Links with a replica, least recently used first."""
        return self._links.keys()

    def held_bytes(self) -> dict[str, int]:
        """Bytes each link's replica holds (at most ``max_links`` links)."""
        return self._links.held_bytes()


@dataclass
class _ReceiverLink:
    epoch: int
    seq: int
    spec: Spec
    replica: dict[str, np.ndarray]


class Receiver:
    """The receiving side of every link: its copy of each sender's model."""

    def __init__(self, *, max_links: int = 16) -> None:
        self._links = _Lru(max_links)

    def accept(self, link: str, header: LinkUpdateHeader, tensors: Update, *, adopt: bool = False) -> AcceptResult:
        """Apply an update whose tensors the wire layer has already decoded (deltas for float
        tensors, values for the others; a sparse codec's deltas may stay ``SparseTensor``s,
        ``protocol.wire.decode_packet(sparse=True)``, and are added in place). Nothing changes
        unless the result is ``Applied``.

        ``adopt=True`` hands the tensors over (e.g. views of a received buffer nobody else
        holds, ``protocol.wire.decode_packet(owned=True)``): a keyframe's writable arrays
        become the copy itself instead of being copied."""
        spec = spec_of(tensors)
        if header.keyframe:
            replica = {n: x if adopt and _adoptable(x) else _own(_dense(x)) for n, x in tensors.items()}
            state = _ReceiverLink(header.epoch, header.seq, spec, replica)
            self._links.put(link, state)
            return Applied(_readonly(state.replica), keyframe=True)
        state = self._links.get(link)  # a use of the link, fit or not
        unfit = self.precheck(link, header)
        if unfit is not None:
            return unfit
        assert isinstance(state, _ReceiverLink)
        if spec != state.spec:
            return NeedKeyframe("spec")
        if not _sums_stay_finite(state.replica, tensors):
            return NeedKeyframe("non_finite")
        for name, x in tensors.items():
            hat = state.replica[name]
            if hat.dtype.kind == "f":
                add_delta(hat, x)
            else:
                hat[...] = _dense(x)
        state.seq = header.seq
        return Applied(_readonly(state.replica), keyframe=False)

    def precheck(self, link: str, header: LinkUpdateHeader) -> NeedKeyframe | None:
        """What ``accept`` would answer from the header alone: a ``NeedKeyframe`` for an
        update our copy cannot take whatever its tensors (no copy, another epoch, stale, a
        gap), None when only its tensors can still make it unfit. Changes nothing. It lets
        the answering side of an exchange ask for a keyframe in a reply it builds while the
        update's tensors are still arriving."""
        if header.keyframe:
            return None
        state = self._links.peek(link)
        if not isinstance(state, _ReceiverLink):
            return NeedKeyframe("unknown_link")
        if header.epoch != state.epoch:
            return NeedKeyframe("epoch")
        if header.seq <= state.seq:
            return NeedKeyframe("stale")
        if header.seq != state.seq + 1:
            return NeedKeyframe("gap")
        return None

    def replica(self, link: str) -> Mapping[str, np.ndarray] | None:
        """A read-only view of this receiver's copy of ``link``'s sender's model."""
        state = self._links.peek(link)
        return _readonly(state.replica) if isinstance(state, _ReceiverLink) else None

    def forget(self, link: str) -> None:
        """Drop ``link``'s replica (a peer that left)."""
        self._links.pop(link)

    def links(self) -> list[str]:
        return self._links.keys()

    def held_bytes(self) -> dict[str, int]:
        """Bytes each link's copy holds (at most ``max_links`` links)."""
        return self._links.held_bytes()
