"""Seeds and hostile values for the packet and codec fuzzers, and the well-formedness check.

The seed corpus is real: the digits MLP of the model zoo (``build_model("mlp",
(1, 8, 8), 10)``), plus a few small tensors of every other wire dtype, framed by
``encode_packet`` once per registered codec and once with a mix of all of them. The
fuzzers mutate these packets, so most inputs get past msgpack and reach the schema
checks, the fingerprint, the codecs and the finiteness check.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
from hypothesis import strategies as st

from protocol import codecs
from protocol.codecs import quant
from protocol.errors import WireError
from protocol.wire import (
    FINGERPRINT_BYTES,
    WIRE_DTYPES,
    Limits,
    Packet,
    PacketHeader,
    TensorSpec,
    decode_packet,
    encode_no_model,
    encode_packet,
    fingerprint,
    specs_of,
)

# Limits for decoding *without* the receiver's model (``expected=None``): a hostile
# packet may then declare any shapes, and sparse codecs legitimately expand a tiny
# payload to the declared size, so the per-tensor bound is kept small enough that a
# fuzzed packet cannot make the suite allocate more than a few MiB.
FUZZ_LIMITS = Limits(max_tensor_elements=1 << 18)
DEFAULT_LIMITS = Limits()
TIGHT_LIMITS = Limits(max_packet_bytes=1 << 16, max_tensors=4, max_tensor_elements=4096, max_rank=2,
                      max_string=8, max_params=2)


def mlp_state() -> dict[str, np.ndarray]:
    """The digits MLP's state (float32), plus one small tensor of every other wire dtype."""
    from peer.models import build_model

    model = build_model("mlp", (1, 8, 8), 10)
    state = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(7)
    state.update({
        "bn.num_batches_tracked": np.array(12, np.int64),
        "mask": rng.integers(0, 2, 9).astype(np.bool_),
        "half": rng.standard_normal((3, 5)).astype(np.float16),
        "double": rng.standard_normal(6).astype(np.float64),
        "counts": rng.integers(-100, 100, 4).astype(np.int32),
        "bytes": rng.integers(0, 255, 3).astype(np.uint8),
        "empty": np.zeros((0, 4), np.float32),
    })
    return state


def _encoder(name: str) -> codecs.Codec:
    options: dict[str, Any] = {}
    if name in ("int8", "int4", "topk", "topk_int8", "randk"):
        options["seed"] = 1
    if name in ("topk", "topk_int8", "randk"):
        options["ratio"] = 0.05
    try:
        return codecs.make(name, **options)
    except TypeError:  # a codec registered later with other options: its defaults
        return codecs.make(name)


@dataclass(frozen=True)
class Seed:
    """One well-formed packet and the model it carries."""

    label: str
    data: bytes
    tensors: Mapping[str, np.ndarray]
    specs: tuple[TensorSpec, ...]
    # Offsets where msgpack structure (not payload bytes) sits: mutations aim there often.
    hot: tuple[int, ...]


def _hot_offsets(data: bytes, payloads: Sequence[bytes]) -> tuple[int, ...]:
    hot = set(range(min(len(data), 256)))
    hot.update(range(max(0, len(data) - 16), len(data)))
    cursor = 0
    for p in payloads:
        if len(p) < 4:
            continue
        at = data.find(p, cursor)
        if at < 0:
            continue
        hot.update(range(max(0, at - 80), min(len(data), at + 8)))
        cursor = at + len(p)
    return tuple(sorted(hot))


@functools.lru_cache(maxsize=1)
def seeds() -> tuple[Seed, ...]:
    """One packet per registered codec (big tensors through it, the rest exact), one mixing
    every codec tensor by tensor, and a delta frame."""
    state = mlp_state()
    specs = specs_of(state)
    fp = fingerprint(specs)
    raw, fp32 = codecs.get("raw"), codecs.get("fp32")
    names = codecs.available()
    out = []

    def frame(label: str, chooser: Any, **header: Any) -> None:
        used: list[bytes] = []

        def tracking(name: str, x: np.ndarray) -> codecs.Codec:
            codec = chooser(name, x)
            return _Tracking(codec, used)

        fields = dict(sender_id="peer-a", sender_addr="10.0.0.1:7000", fingerprint=fp, model_version=3,
                      age=40, samples=1797, codec=label, codec_params={"ratio": 0.05},
                      telemetry={"steps": 40, "acc": 0.5})
        fields.update(header)
        data = encode_packet(PacketHeader(**fields), state, tracking)
        out.append(Seed(label, data, state, specs, _hot_offsets(data, used)))

    for name in names:
        enc = _encoder(name)

        def choose(_n: str, x: np.ndarray, enc: codecs.Codec = enc) -> codecs.Codec:
            if enc.supports(x.dtype) and x.size:
                return enc
            return fp32 if fp32.supports(x.dtype) else raw
        frame(name, choose)

    mixed = [_encoder(n) for n in names]
    order = {name: i for i, name in enumerate(state)}

    def choose_mixed(n: str, x: np.ndarray) -> codecs.Codec:
        for k in range(len(mixed)):
            enc = mixed[(order[n] + k) % len(mixed)]
            if enc.supports(x.dtype) and (x.size or enc.name in ("raw", "fp32", "fp16")):
                return enc
        return raw
    frame("mixed", choose_mixed)
    frame("delta", choose_mixed, link_epoch=99, link_seq=5, keyframe=False, need_keyframe=True,
          telemetry={})
    frame("one_way", choose_mixed, link_epoch=3, link_seq=8, keyframe=False, one_way=True)
    # The answer to a one-way packet: the header alone (its mutations reach the no-model checks).
    answer = encode_no_model(PacketHeader(sender_id="peer-b", sender_addr="10.0.0.2:7000", fingerprint=fp,
                                          model_version=4, age=41, samples=1797, need_keyframe=True,
                                          telemetry={"steps": 41, "round": 3}))
    out.append(Seed("no_model", answer, {}, specs, tuple(range(len(answer)))))
    return tuple(out)


class _Tracking:
    """A codec wrapper that records the payloads it produced (to find them in the packet)."""

    def __init__(self, codec: codecs.Codec, used: list[bytes]) -> None:
        self.name = codec.name
        self._codec = codec
        self._used = used

    def supports(self, dtype: np.dtype) -> bool:
        return self._codec.supports(dtype)

    def encode(self, x: np.ndarray) -> codecs.Encoded:
        enc = self._codec.encode(x)
        self._used.append(enc.payload)
        return enc


# --- hostile values ---------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
HOSTILE_INTS = (0, 1, -1, 2, 3, 7, 8, 255, 256, 511, 512, 1 << 15, 1 << 16, (1 << 16) + 1, (1 << 28) + 1,
                (1 << 31) - 1, 1 << 31, 1 << 32, (1 << 53) + 1, 1 << 62, (1 << 63) - 1, 1 << 63,
                (1 << 64) - 1, -(1 << 31), -(1 << 63))
HOSTILE_FLOATS = (NAN, INF, -INF, 0.0, -0.0, 0.5, 1.5, -1.0, 1e308, 5e-324, 3.4e38, 65504.0, 1e-45)
HOSTILE_SCALARS: tuple[Any, ...] = (
    *HOSTILE_INTS, *HOSTILE_FLOATS, True, False, None, "", "x" * 300, "\x00", "é" * 200, "fp32",
    b"", b"\x00" * FINGERPRINT_BYTES, b"\xff" * 17, [], [[]], {}, {"a": 1}, [0, 0, True], [1, 2],
    [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]], {"k": [1, {"z": None}]},
)

ints_packable = st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
scalars = st.one_of(
    st.sampled_from(HOSTILE_SCALARS),
    ints_packable,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=24),
    st.binary(max_size=24),
    st.booleans(),
    st.none(),
)
# Any msgpack value (what an attacker can put anywhere).
msgpack_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=6),
                            st.dictionaries(st.text(max_size=6), inner, max_size=5)),
    max_leaves=8,
)

HOSTILE_SHAPES: tuple[Any, ...] = (
    [1 << 31, 1 << 31], [1 << 62], [(1 << 64) - 1], [0, (1 << 63) - 1], [0, 1 << 40, 1 << 40],
    [1 << 14, 1 << 14], [(1 << 14) + 1, 1 << 14], [1 << 18], [(1 << 18) + 1], [1 << 10, 1 << 8],
    [-1], [-(1 << 63)], [True], [False, 3], [1.0], [NAN], ["8"], [None], [[2]], [1] * 9, [1] * 8,
    [], [0], [0, 0], 5, "8,8", None, {"0": 1}, [2, 0, 2],
)
BAD_DTYPES = ("float128", "complex64", "object", "<f4", "float", "f4", "", "FLOAT32", "uint64", "str",
              "float32\x00", "V8")
UNKNOWN_CODECS = ("", "zstd", "FP32", "fp32 ", "topk\x00", "pickle", "x" * 300)
DTYPE_NAMES = tuple(sorted(WIRE_DTYPES))

_SEED_BOUNDARY = (-1, 0, 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, True, 1.5, NAN, None, "0")
_CHUNK_BOUNDARY = (-2, 0, 1, 2, 3, 4, 127, 128, 256, 512, quant.MAX_CHUNK - 1, quant.MAX_CHUNK,
                   quant.MAX_CHUNK + 2, 1 << 31, True, 2.0, NAN, None, "512")
_K_BOUNDARY = (-1, 0, 1, 2, 100, 16384, 16385, 1 << 28, 1 << 63, (1 << 64) - 1, True, 1.0, INF, None)
_WIDTH_BOUNDARY = (-1, 0, 1, 2, 3, 4, 5, 8, True, 2.0, None)
_LEN_BOUNDARY = (-1, 0, 1, 9, 13, 64, 1 << 20, (1 << 64) - 1, False, 0.0, None)
# For every registered codec: its decode parameters and values on and beyond their ranges.
PARAM_BOUNDARIES: dict[str, dict[str, tuple[Any, ...]]] = {
    "raw": {},
    "fp32": {},
    "fp16": {},
    "int8": {"c": _CHUNK_BOUNDARY, "seed": _SEED_BOUNDARY},
    "int4": {"c": _CHUNK_BOUNDARY, "seed": _SEED_BOUNDARY},
    "topk": {"k": _K_BOUNDARY, "iw": _WIDTH_BOUNDARY, "il": _LEN_BOUNDARY},
    "topk_int8": {"k": _K_BOUNDARY, "iw": _WIDTH_BOUNDARY, "il": _LEN_BOUNDARY, "c": _CHUNK_BOUNDARY,
                  "seed": _SEED_BOUNDARY},
    "randk": {"k": _K_BOUNDARY, "seed": _SEED_BOUNDARY},
}


@st.composite
def hostile_params(draw: st.DrawFn, codec: str, base: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with one to three of: a known key set to a boundary/hostile value, a key
    removed, an unknown key added."""
    params = dict(base)
    bounds = PARAM_BOUNDARIES.get(codec, {})
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(("boundary", "boundary", "hostile", "drop", "extra")))
        keys = sorted(set(bounds) | set(params))
        if action == "boundary" and bounds:
            key = draw(st.sampled_from(sorted(bounds)))
            params[key] = draw(st.sampled_from(bounds[key]))
        elif action == "hostile" and keys:
            params[draw(st.sampled_from(keys))] = draw(scalars)
        elif action == "drop" and params:
            params.pop(draw(st.sampled_from(sorted(params))))
        else:
            params[draw(st.sampled_from(("zz", "", "c", "k", "seed", "x" * 300)))] = draw(scalars)
    return params


def params_packable(value: Any) -> bool:
    try:
        msgpack.packb(value, use_bin_type=True)
    except (OverflowError, TypeError, ValueError):
        return False
    return True


# --- the contract -----------------------------------------------------------------------------

def decode_or_error(data: bytes | memoryview, *, expected: Sequence[TensorSpec] | None,
                    limits: Limits) -> Packet | WireError:
    """``decode_packet``; a typed error is returned, anything else escapes and fails the test."""
    try:
        packet = decode_packet(data, expected=expected, limits=limits)
    except WireError as e:
        assert isinstance(e.reason, str) and e.reason, f"{type(e).__name__} without a reason"
        assert isinstance(e.message, str)
        return e
    check_packet(packet, expected=expected, limits=limits)
    return packet


def _scalar_map(m: Any, limits: Limits) -> None:
    assert isinstance(m, dict) and len(m) <= limits.max_params
    for k, v in m.items():
        assert isinstance(k, str) and len(k) <= limits.max_string
        assert v is None or isinstance(v, (bool, int, float, str)), f"non-scalar {type(v).__name__}"
        if isinstance(v, str):
            assert len(v) <= max(limits.max_string, 64)


def check_packet(packet: Packet, *, expected: Sequence[TensorSpec] | None, limits: Limits) -> None:
    """A decoded packet is well formed: typed header fields within limits, tensors of the
    declared shape and dtype, finite floats, and a fingerprint that matches them.

    Not checked here (known findings, each with its own strict-xfail reproduction):
    finiteness of telemetry/codec-param floats and canonical bool bytes.
    """
    h = packet.header
    assert isinstance(h, PacketHeader)
    for s in (h.sender_id, h.sender_addr, h.codec):
        assert isinstance(s, str) and len(s) <= limits.max_string
    assert isinstance(h.fingerprint, bytes) and len(h.fingerprint) == FINGERPRINT_BYTES
    for v in (h.model_version, h.age, h.samples):
        assert type(v) is int and v >= 0
    for v in (h.link_epoch, h.link_seq):
        assert type(v) is int and 0 <= v < 1 << 63
    assert type(h.keyframe) is bool and type(h.need_keyframe) is bool
    assert type(h.one_way) is bool and type(h.carries_model) is bool and not (h.one_way and not h.carries_model)
    _scalar_map(h.codec_params, limits)
    _scalar_map(h.telemetry, limits)
    assert isinstance(packet.tensors, dict) and len(packet.tensors) <= limits.max_tensors
    for name, x in packet.tensors.items():
        assert isinstance(name, str) and len(name) <= limits.max_string
        assert isinstance(x, np.ndarray), type(x)
        assert x.ndim <= limits.max_rank and x.size <= limits.max_tensor_elements
        assert x.dtype.name in WIRE_DTYPES and x.dtype.isnative
        if x.dtype.kind == "f":
            assert np.isfinite(x).all(), f"{name} has non-finite values"
    if not h.carries_model:  # an answer without a model: no tensors, and still the right architecture
        assert packet.tensors == {} and (h.link_epoch, h.link_seq, h.keyframe) == (0, 0, False)
        assert expected is None or h.fingerprint == fingerprint(expected)
        return
    specs = packet.specs()
    assert fingerprint(specs) == h.fingerprint
    if expected is not None:
        assert specs == tuple(expected)
    # A decoded packet is a packet: framed again exactly, it decodes to the same tensors.
    exact = {name: ("fp32" if x.dtype.name == "float32" else "raw") for name, x in packet.tensors.items()}
    again = decode_packet(encode_packet(h, packet.tensors, lambda n, _x: codecs.get(exact[n])),
                          expected=expected, limits=limits)
    assert list(again.tensors) == list(packet.tensors)
    for name, x in packet.tensors.items():
        np.testing.assert_array_equal(again.tensors[name], x)


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)
