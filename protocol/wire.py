"""msgpack framing of a model packet, with strict validation on decode.

A packet is one msgpack map::

    {"v": format version, "id": sender id, "addr": sender gossip address,
     "fp": model fingerprint (16 bytes), "mv": model version, "age": local steps,
     "n": sample count, "codec": codec policy name, "cp": policy parameters,
     "tm": the sender's telemetry (optional map of scalars),
     "lk": [link epoch, link seq, keyframe?], "nk": need-keyframe flag (both optional),
     "ow": one-way flag (optional): the sender wants no model back,
     "nm": no-model flag (optional): a reply that carries no model ("t" is then empty),
     "t": [[name, shape, dtype, codec, params, payload], ...]}

The two optional flags are written only when set, so every other packet is byte for byte
what it was before them; a peer that predates them ignores "ow" (it answers with a model,
which the sender accepts as usual) and refuses an "nm" reply (its fingerprint does not
match the empty tensor list), so neither side ever misreads the other.

``decode_packet`` never lets a parser exception escape: every way the bytes can be
wrong maps to a ``protocol.errors.WireError`` subclass, and every declared size is
checked against limits and against what actually arrived before anything
proportional to it is allocated (the msgpack layer is ``protocol.msgpack_reader``,
shared with the membership codec).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
import numpy as np

from protocol import codecs
from protocol.codecs.base import Codec, Params, SparseTensor
from protocol.errors import (
    FingerprintMismatch,
    MalformedPacket,
    NonFiniteValues,
    PacketTooLarge,
    TruncatedPacket,
    UnsupportedVersion,
    WireError,
)
from protocol.msgpack_reader import Fault, MsgpackError, Reader, ReadLimits, unpack

FORMAT_VERSION = 1
# gRPC's default message limit is 4 MiB; frames stay well below it.
FRAME_BYTES = 1 << 20
FINGERPRINT_BYTES = 16
# dtypes a packet may declare; anything else is refused before decoding.
WIRE_DTYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64",
                         "uint8", "bool"})


@dataclass(frozen=True)
class TensorSpec:
    """What must match between two peers' models: name, shape and dtype of a tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str


def specs_of(tensors: Mapping[str, np.ndarray]) -> tuple[TensorSpec, ...]:
    """The specs of a model's tensors, in the model's own order."""
    return tuple(TensorSpec(name, tuple(int(d) for d in t.shape), np.dtype(t.dtype).name)
                 for name, t in tensors.items())


def fingerprint(specs: Sequence[TensorSpec]) -> bytes:
    """A 16-byte digest of the names, shapes and dtypes: equal iff architectures match."""
    canon = msgpack.packb([[s.name, list(s.shape), s.dtype] for s in specs])
    return hashlib.sha256(canon).digest()[:FINGERPRINT_BYTES]


@dataclass(frozen=True)
class Limits:
    """Upper bounds checked before allocation; a packet beyond any of them is refused."""

    max_packet_bytes: int = 1 << 30
    max_tensors: int = 4096
    max_tensor_elements: int = 1 << 28
    # All tensors together: what a packet may make us allocate, whatever its codecs expand
    # (None: as many as one maximal tensor).
    max_total_elements: int | None = None
    max_rank: int = 8
    max_string: int = 256
    max_params: int = 16


@dataclass(frozen=True)
class PacketHeader:
    """Everything about a packet except the tensor payloads."""

    sender_id: str
    sender_addr: str
    fingerprint: bytes
    model_version: int
    age: int
    samples: int
    codec: str = "fp32"
    codec_params: Params = field(default_factory=dict)
    # The sender's own figures (steps, accuracy, bytes...), so any peer can show the swarm.
    telemetry: Params = field(default_factory=dict)
    # Per-link replica frame (protocol.feedback): a keyframe carries the model itself,
    # otherwise the tensors are deltas against the receiver's copy at (epoch, seq - 1).
    link_epoch: int = 0
    link_seq: int = 0
    keyframe: bool = True
    # The sender could not apply the last frame it got from the receiver: send a keyframe.
    need_keyframe: bool = False
    # One-way: the sender wants no model back (a push to an aggregator, or of an aggregate
    # to the next round's trainers); the receiver answers with a packet carrying none.
    one_way: bool = False
    # False on such an answer: no tensors, and no link frame (neither side's replicas move).
    carries_model: bool = True
    format_version: int = FORMAT_VERSION


@dataclass(frozen=True)
class Packet:
    """A decoded, validated packet: header plus reconstructed tensors in wire order."""

    header: PacketHeader
    # Dense arrays; with ``decode_packet(sparse=True)`` a sparse codec's tensors are ``SparseTensor``s.
    tensors: dict[str, np.ndarray | SparseTensor]

    def specs(self) -> tuple[TensorSpec, ...]:
        return specs_of(self.tensors)


CodecChooser = Callable[[str, np.ndarray], Codec]


def encode_packet_parts(header: PacketHeader, tensors: Mapping[str, np.ndarray],
                        choose_codec: CodecChooser) -> list[bytes | memoryview]:
    """The packet as a list of buffers whose concatenation is ``encode_packet``'s output.

    The tensor payloads are the codecs' own buffers, not copies: a transport can send
    the parts one after the other (``peer.transport.frames.to_frames`` accepts them)
    without ever holding the whole packet in one more buffer.
    """
    packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    fields: list[tuple[str, Any]] = [
        ("v", header.format_version), ("id", header.sender_id), ("addr", header.sender_addr),
        ("fp", header.fingerprint), ("mv", header.model_version), ("age", header.age),
        ("n", header.samples), ("codec", header.codec), ("cp", header.codec_params), ("tm", header.telemetry),
        ("lk", [header.link_epoch, header.link_seq, header.keyframe]), ("nk", header.need_keyframe),
    ]
    if header.one_way:
        fields.append(("ow", True))
    if not header.carries_model:
        if tensors:
            raise ValueError("a packet that carries no model cannot carry tensors")
        fields.append(("nm", True))
    head = [packer.pack_map_header(len(fields) + 1)]
    for key, value in fields:
        head += [packer.pack(key), packer.pack(value)]
    head += [packer.pack("t"), packer.pack_array_header(len(tensors))]
    parts: list[bytes | memoryview] = []
    for name, x in tensors.items():
        codec = choose_codec(name, x)
        enc = codec.encode(x)
        payload = memoryview(enc.payload).cast("B")
        head += [packer.pack_array_header(6), packer.pack(name), packer.pack(list(x.shape)),
                 packer.pack(np.dtype(x.dtype).name), packer.pack(codec.name), packer.pack(enc.params),
                 _bin_header(payload.nbytes)]
        parts += [b"".join(head), payload]
        head = []
    if head:
        parts.append(b"".join(head))
    return parts


def _bin_header(n: int) -> bytes:
    """msgpack's bin8/16/32 header, exactly as ``packb(use_bin_type=True)`` writes it."""
    if n < 1 << 8:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 1 << 16:
        return b"\xc5" + n.to_bytes(2, "big")
    if n < 1 << 32:
        return b"\xc6" + n.to_bytes(4, "big")
    raise PacketTooLarge(f"payload of {n} bytes does not fit a msgpack bin")


Buffer = bytes | bytearray | memoryview


def packet_size(packet: Buffer | Sequence[Buffer]) -> int:
    """Bytes in a packet given as one buffer or as ``encode_packet_parts``' buffers."""
    if isinstance(packet, (bytes, bytearray, memoryview)):
        return memoryview(packet).nbytes
    return sum(memoryview(part).nbytes for part in packet)


def encode_packet(header: PacketHeader, tensors: Mapping[str, np.ndarray],
                  choose_codec: CodecChooser) -> bytes:
    """Frame ``tensors`` with ``header``; ``choose_codec`` picks each tensor's codec.

    The same bytes as ``msgpack.packb`` of the packet map, built with one copy of the
    payloads (``packb`` makes two: into its buffer, then into the result).
    """
    return b"".join(encode_packet_parts(header, tensors, choose_codec))


def encode_no_model(header: PacketHeader) -> bytes:
    """A packet of ``header`` alone: the answer to a one-way packet. It carries no model and
    no link frame, so neither side's per-link replicas move."""
    return encode_packet(replace(header, link_epoch=0, link_seq=0, keyframe=False, one_way=False, carries_model=False),
                         {}, lambda name, _x: codecs.get("raw"))


# --- decoding ---------------------------------------------------------------------------------

def _read_limits(limits: Limits) -> ReadLimits:
    return ReadLimits(max_str=max(limits.max_string, 64), max_array=max(limits.max_tensors, limits.max_rank, 16),
                      max_map=max(limits.max_params, 16))


def _unpack(data: bytes | bytearray | memoryview, limits: Limits, writable: bool = False) -> Any:
    """The packet's msgpack value, its ``bin`` values views of ``data`` (no second copy of
    the model); every fault of the bytes becomes a ``WireError``."""
    try:
        return unpack(data, _read_limits(limits), writable)
    except MsgpackError as e:
        if e.fault is Fault.TRUNCATED:
            raise TruncatedPacket("packet ended before its declared contents") from None
        if e.fault is Fault.TRAILING:
            raise MalformedPacket("trailing bytes after the packet") from None
        raise MalformedPacket(f"not a msgpack packet: {e.detail}") from None


def _field(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in obj:
        raise MalformedPacket(f"missing field {what!r}")
    value = obj[key]
    # bool is an int in Python; a bool where a number belongs is a schema error.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise MalformedPacket(f"field {what!r} has type {type(value).__name__}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _string(value: Any, what: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise MalformedPacket(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > limits.max_string:
        raise PacketTooLarge(f"{what} is longer than {limits.max_string} characters")
    return value


def _params(value: Any, what: str, limits: Limits) -> Params:
    if not isinstance(value, dict):
        raise MalformedPacket(f"{what} must be a map, got {type(value).__name__}")
    if len(value) > limits.max_params:
        raise PacketTooLarge(f"{what} has more than {limits.max_params} entries")
    for k, v in value.items():
        _string(k, f"{what} key", limits)
        if not isinstance(v, (int, float, str, bool)) and v is not None:
            raise MalformedPacket(f"{what}[{k!r}] must be a scalar, got {type(v).__name__}")
        # Numbers in headers end up in counters, gauges and int() conversions: keep them sane.
        if isinstance(v, float) and not math.isfinite(v):
            raise MalformedPacket(f"{what}[{k!r}] is not a finite number")
        if isinstance(v, int) and not isinstance(v, bool) and not -(1 << 63) <= v < 1 << 64:
            raise MalformedPacket(f"{what}[{k!r}] is out of the 64-bit range")
    return dict(value)


def _shape(value: Any, name: str, limits: Limits) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > limits.max_rank:
        raise MalformedPacket(f"tensor {name!r}: shape must be a list of at most {limits.max_rank} sizes")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise MalformedPacket(f"tensor {name!r}: shape {value!r} must hold non-negative integers")
    if math.prod(value) > limits.max_tensor_elements:
        raise PacketTooLarge(f"tensor {name!r}: {math.prod(value)} elements exceed the limit "
                             f"of {limits.max_tensor_elements}")
    return tuple(value)


def _header(obj: Mapping[str, Any], limits: Limits) -> PacketHeader:
    fp = _field(obj, "fp", (bytes, memoryview), "fingerprint")
    fp = bytes(fp)
    if len(fp) != FINGERPRINT_BYTES:
        raise MalformedPacket(f"fingerprint must be {FINGERPRINT_BYTES} bytes, got {len(fp)}")
    ints = {k: _field(obj, k, int, k) for k in ("mv", "age", "n")}
    if any(v < 0 for v in ints.values()):
        raise MalformedPacket("model version, age and sample count must be non-negative")
    return PacketHeader(
        sender_id=_string(_field(obj, "id", str, "sender id"), "sender id", limits),
        sender_addr=_string(_field(obj, "addr", str, "sender address"), "sender address", limits),
        fingerprint=fp, model_version=ints["mv"], age=ints["age"], samples=ints["n"],
        codec=_string(_field(obj, "codec", str, "codec"), "codec", limits),
        codec_params=_params(_field(obj, "cp", dict, "codec params"), "codec params", limits),
        telemetry=_params(obj.get("tm", {}), "telemetry", limits),
        **_link_frame(obj), format_version=FORMAT_VERSION)


# A header is a few hundred bytes (strings and telemetry are bounded by ``Limits``): one
# that has not ended within this many bytes is not looked for any further.
HEADER_PEEK_BYTES = 64 << 10


def peek_header(prefix: bytes | bytearray | memoryview, limits: Limits = Limits()) -> PacketHeader | None:
    """The header of a packet whose first bytes are ``prefix``, read before its tensors have
    arrived: a receiver can then make room for a keyframe (drop the copy of the sender's model
    it replaces) while the keyframe is still being received, instead of holding both.

    None when ``prefix`` does not hold the whole header (the fields before ``"t"``, within
    ``HEADER_PEEK_BYTES``), or is not the start of a valid packet; it never raises. Nothing
    here vouches for the packet: ``decode_packet`` checks all of it once it has arrived."""
    reader = Reader(memoryview(prefix).cast("B")[:HEADER_PEEK_BYTES], _read_limits(limits))
    try:
        fields: dict[str, Any] = {}
        for _ in range(reader.read_map_header()):
            key = reader.read()
            if key == "t":
                break
            if not isinstance(key, str) or key in fields:
                return None
            fields[key] = reader.read()
        else:
            return None  # no tensors field: not a packet decode_packet would take
        version = fields.get("v")
        if version != FORMAT_VERSION or isinstance(version, bool):
            return None
        return _header(fields, limits)
    except (MsgpackError, WireError):
        return None


def _link_frame(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The optional link-frame fields; a packet without them is a keyframe."""
    frame = obj.get("lk", [0, 0, True])
    if (not isinstance(frame, list) or len(frame) != 3 or not isinstance(frame[2], bool)
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 63 for v in frame[:2])):
        raise MalformedPacket("link frame must be [epoch, seq, keyframe]")
    flags = {key: obj.get(key, False) for key in ("nk", "ow", "nm")}
    if not all(isinstance(v, bool) for v in flags.values()):
        raise MalformedPacket("need-keyframe, one-way and no-model flags must be booleans")
    if flags["ow"] and flags["nm"]:  # only a packet with a model asks for an answer without one
        raise MalformedPacket("a packet that carries no model cannot be one-way")
    return {"link_epoch": frame[0], "link_seq": frame[1], "keyframe": frame[2], "need_keyframe": flags["nk"],
            "one_way": flags["ow"], "carries_model": not flags["nm"]}


def _mismatch_detail(got: Sequence[TensorSpec], want: Sequence[TensorSpec]) -> str:
    for g, w in zip(got, want):
        if g != w:
            return (f"tensor {g.name!r} {list(g.shape)} {g.dtype} where this peer has "
                    f"{w.name!r} {list(w.shape)} {w.dtype}")
    return f"{len(got)} tensors where this peer has {len(want)}"


_FINITE_BLOCK = 1 << 18


def _all_finite(x: np.ndarray) -> bool:
    """``np.isfinite(x).all()`` in blocks, so the check never allocates a mask of the
    whole tensor (a quarter of an fp32 model for its largest layer)."""
    flat = x.reshape(-1)
    return all(bool(np.isfinite(flat[i:i + _FINITE_BLOCK]).all()) for i in range(0, flat.size, _FINITE_BLOCK))


def decode_packet(data: bytes | bytearray | memoryview, *, expected: Sequence[TensorSpec] | None = None,
                  limits: Limits = Limits(), owned: bool = False, sparse: bool = False) -> Packet:
    """Parse and validate ``data``; raise a ``WireError`` subclass for anything wrong.

    Tensors that a codec can rebuild without transforming them (``fp32``, ``raw``) are
    read-only views of ``data``, not copies: keep ``data`` unchanged while they live.
    ``owned=True`` says the caller hands ``data`` (a writable buffer) over to the result:
    those views are then writable, so a receiver can keep them as its own copy of the
    sender's model instead of copying a whole keyframe (``protocol.feedback.Receiver``).

    ``sparse=True`` keeps what a sparse codec (top-k, rand-k) sent as a ``SparseTensor``
    (its entries and their positions, checked the same way) instead of a dense array that
    is mostly zeros: ``protocol.feedback.Receiver`` adds it to its copy in place.

    ``expected`` is the receiver's own model: a packet for another architecture is
    refused with ``FingerprintMismatch`` before any payload is decoded.
    """
    if len(data) > limits.max_packet_bytes:
        raise PacketTooLarge(f"packet of {len(data)} bytes exceeds the limit of {limits.max_packet_bytes}")
    if len(data) == 0:
        raise TruncatedPacket("empty packet")
    obj = _unpack(data, limits, writable=owned)
    if not isinstance(obj, dict):
        raise MalformedPacket(f"packet must be a map, got {type(obj).__name__}")
    version = obj.get("v")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise UnsupportedVersion(f"wire format version {version!r}; this peer speaks {FORMAT_VERSION}")
    header = _header(obj, limits)
    entries = _field(obj, "t", list, "tensors")
    if len(entries) > limits.max_tensors:
        raise PacketTooLarge(f"{len(entries)} tensors exceed the limit of {limits.max_tensors}")
    if not header.carries_model:
        if entries:
            raise MalformedPacket("a packet that says it carries no model carries tensors")
        # The fingerprint still says which model the sender runs: another architecture is refused.
        if expected is not None and header.fingerprint != fingerprint(expected):
            raise FingerprintMismatch("model mismatch: the sender runs another architecture")
        # Whatever link frame it declares, an answer without a model moves no replica.
        return Packet(replace(header, link_epoch=0, link_seq=0, keyframe=False), {})

    declared: list[tuple[TensorSpec, str, Params, memoryview]] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, list) or len(entry) != 6:
            raise MalformedPacket(f"tensor entry {i} must be [name, shape, dtype, codec, params, payload]")
        name = _string(entry[0], f"tensor {i} name", limits)
        if name in seen:
            raise MalformedPacket(f"tensor {name!r} appears twice")
        seen.add(name)
        shape = _shape(entry[1], name, limits)
        dtype = _string(entry[2], f"tensor {name!r} dtype", limits)
        if dtype not in WIRE_DTYPES:
            raise MalformedPacket(f"tensor {name!r}: dtype {dtype!r} is not allowed on the wire")
        codec_name = _string(entry[3], f"tensor {name!r} codec", limits)
        params = _params(entry[4], f"tensor {name!r} params", limits)
        if not isinstance(entry[5], (bytes, memoryview)):
            raise MalformedPacket(f"tensor {name!r}: payload must be bytes")
        declared.append((TensorSpec(name, shape, dtype), codec_name, params, entry[5]))

    specs = [d[0] for d in declared]
    total = sum(math.prod(spec.shape) for spec in specs)
    total_limit = limits.max_total_elements or limits.max_tensor_elements
    if total > total_limit:
        raise PacketTooLarge(f"{total} elements in all exceed the limit of {total_limit}")
    if fingerprint(specs) != header.fingerprint:
        raise MalformedPacket("header fingerprint does not match the tensors the packet carries")
    if expected is not None and header.fingerprint != fingerprint(expected):
        raise FingerprintMismatch("model mismatch: " + _mismatch_detail(specs, expected))

    tensors: dict[str, np.ndarray] = {}
    for spec, codec_name, params, payload in declared:
        codec = codecs.get(codec_name)
        dtype = np.dtype(spec.dtype)
        if not codec.supports(dtype):
            raise MalformedPacket(f"tensor {spec.name!r}: codec {codec_name!r} cannot carry {spec.dtype}")
        try:
            if sparse and hasattr(codec, "decode_sparse"):
                x = codec.decode_sparse(payload, spec.shape, dtype, params)
            else:
                x = codec.decode(payload, spec.shape, dtype, params)
        except WireError:
            raise
        except Exception as e:  # noqa: BLE001 - a codec bug on hostile input must still be typed
            raise MalformedPacket(f"tensor {spec.name!r}: {codec_name} payload: {e}") from None
        # A sparse tensor's other elements are zeros: its entries decide whether it is finite.
        if dtype.kind == "f" and not _all_finite(x.values if isinstance(x, SparseTensor) else x):
            raise NonFiniteValues(f"tensor {spec.name!r} contains NaN or infinite values")
        tensors[spec.name] = x
    return Packet(header, tensors)
