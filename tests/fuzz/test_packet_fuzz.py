"""Fuzzing ``protocol.wire.decode_packet``: any bytes give a well-formed packet or a WireError.

Four generators, from blind to structure-aware:

- raw random bytes, and random msgpack values (valid msgpack, wrong schema);
- byte-level mutations of real packets (the digits MLP framed with every codec):
  flips, overwrites with boundary integers, truncations, deletions, insertions,
  duplicated ranges and splices of two packets, aimed mostly at msgpack structure;
- msgpack-level field replacement: a real packet unpacked, one to four fields set to
  hostile values (huge declared shapes, negative/bool numbers, wrong types, duplicate
  names, NaN/Inf payloads, every registered codec's parameters on and beyond their
  ranges), repacked, and usually re-fingerprinted so the packet gets past the
  fingerprint check and into the codecs.

Every input is decoded the way the daemon does (``expected`` = the receiver's own
model, default limits) and without an expected model under ``FUZZ_LIMITS``.
"""

from __future__ import annotations

import copy
import math
import tracemalloc
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import strategies as st

from protocol import codecs
from protocol.errors import WireError
from protocol.wire import Limits, TensorSpec, fingerprint
from tests.fuzz.corpus import (
    BAD_DTYPES,
    DEFAULT_LIMITS,
    DTYPE_NAMES,
    FUZZ_LIMITS,
    HOSTILE_INTS,
    HOSTILE_SHAPES,
    TIGHT_LIMITS,
    UNKNOWN_CODECS,
    Seed,
    decode_or_error,
    hostile_params,
    msgpack_values,
    params_packable,
    scalars,
    seeds,
)
from tests.fuzz.harness import TALLY, fuzz

SEEDS = seeds()
seed_packets = st.sampled_from(SEEDS)


def _decode_both(key: str, data: bytes, seed: Seed | None = None) -> None:
    """Decode as the daemon does and without an expected model; tally the outcomes."""
    expected = seed.specs if seed is not None else SEEDS[0].specs
    for label, kwargs in (("daemon", {"expected": expected, "limits": DEFAULT_LIMITS}),
                          ("open", {"expected": None, "limits": FUZZ_LIMITS})):
        result = decode_or_error(data, **kwargs)  # type: ignore[arg-type]
        TALLY.outcome(key, f"{label}:{getattr(result, 'reason', 'valid')}")


# --- blind ------------------------------------------------------------------------------------

@fuzz("packet_raw_bytes", data=st.one_of(
    st.binary(max_size=512),
    st.binary(min_size=1, max_size=8).map(lambda b: b * 64),  # repeated headers: deep nesting
    st.sampled_from([b"\xc1", b"\x80", b"\x90", b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff",
                     b"\xc6\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xff\x01",
                     b"\x91" * 100_000, b"\x81\xa1v" * 5000, b"\x00" * 1000]),
))
def test_random_bytes_decode_to_a_packet_or_a_typed_error(data: bytes) -> None:
    _decode_both("packet_raw_bytes", data)
    decode_or_error(data, expected=None, limits=TIGHT_LIMITS)


@fuzz("packet_random_msgpack", value=st.one_of(
    msgpack_values,
    st.fixed_dictionaries({"v": st.sampled_from((1, 1, 1.0, True, 2, None))},
                          optional={k: scalars for k in ("id", "addr", "fp", "mv", "age", "n", "codec",
                                                         "cp", "tm", "lk", "nk", "ow", "nm", "t")}),
))
def test_random_msgpack_values_decode_to_a_packet_or_a_typed_error(value: Any) -> None:
    try:
        data = msgpack.packb(value, use_bin_type=True)
    except (OverflowError, TypeError, ValueError):
        return
    _decode_both("packet_random_msgpack", data)


# --- byte mutations of real packets -----------------------------------------------------------

def _aim(draw: st.DrawFn, seed: Seed, size: int) -> int:
    if size == 0:
        return 0
    if draw(st.booleans()):
        return min(draw(st.sampled_from(seed.hot)), size - 1)
    return draw(st.integers(0, size - 1))


@st.composite
def byte_mutants(draw: st.DrawFn) -> tuple[Seed, bytes]:
    seed = draw(seed_packets)
    data = bytearray(seed.data)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(("flip", "set", "int", "truncate", "delete", "insert", "duplicate",
                                   "splice")))
        at = _aim(draw, seed, len(data))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from((0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xC2, 0xC3, 0xCA, 0xCB, 0xCF,
                                             0xD3, 0xDC, 0xDD, 0xDE, 0xDF, 0xFF)))
        elif op == "int" and data:
            width = draw(st.sampled_from((1, 2, 4, 8)))
            value = draw(st.sampled_from(HOSTILE_INTS)) % (1 << (8 * width))
            data[at:at + width] = value.to_bytes(width, draw(st.sampled_from(("big", "little"))))
        elif op == "truncate":
            del data[at:]
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "duplicate" and data:
            data[at:at] = data[at:at + draw(st.integers(1, 256))]
        elif op == "splice":
            other = draw(seed_packets).data
            cut = draw(st.integers(0, len(other)))
            data = data[:at] + bytearray(other[cut:])
    return seed, bytes(data)


@fuzz("packet_byte_mutations", mutant=byte_mutants())
def test_mutated_packets_decode_to_a_packet_or_a_typed_error(mutant: tuple[Seed, bytes]) -> None:
    seed, data = mutant
    _decode_both("packet_byte_mutations", data, seed)


# --- msgpack-level field replacement ----------------------------------------------------------

HEADER_KEYS = ("v", "id", "addr", "fp", "mv", "age", "n", "codec", "cp", "tm", "lk", "nk", "ow", "nm", "t", "zz")


def _poison_payload(draw: st.DrawFn, entry: list[Any]) -> None:
    """Write NaN/Inf/huge values where the codec keeps its floats (values, scales)."""
    payload = entry[5]
    if not isinstance(payload, bytes) or not payload:
        return
    dtype = entry[2] if isinstance(entry[2], str) else "float32"
    codec = entry[3]
    if codec == "fp16" or (codec == "raw" and dtype == "float16"):
        pool = (np.float16("nan"), np.float16("inf"), np.float16("-inf"))
        width, kind = 2, np.float16
    elif codec == "raw" and dtype == "float64":
        pool = (np.float64("nan"), np.float64("inf"), np.float64(1e308))
        width, kind = 8, np.float64
    else:  # float32 values or float32 scales (int8/int4: scales first; topk: values first)
        pool = (np.float32("nan"), np.float32("inf"), np.float32("-inf"), np.float32(3.4e38))
        width, kind = 4, np.float32
    buf = bytearray(payload)
    for _ in range(draw(st.integers(1, 3))):
        slots = len(buf) // width
        if not slots:
            break
        at = width * draw(st.one_of(st.just(0), st.integers(0, slots - 1)))
        buf[at:at + width] = np.array([draw(st.sampled_from(pool))], kind).tobytes()
    entry[5] = bytes(buf)


def _mutate_entry(draw: st.DrawFn, obj: dict[str, Any], seed: Seed) -> None:
    entries = obj.get("t")
    if not isinstance(entries, list) or not entries:
        obj["t"] = draw(msgpack_values)
        return
    i = draw(st.integers(0, len(entries) - 1))
    entry = entries[i]
    if not isinstance(entry, list) or len(entry) != 6:
        entries[i] = draw(msgpack_values)
        return
    what = draw(st.sampled_from(("name", "dup_name", "shape", "shape", "dtype", "codec", "params", "params",
                                 "payload_nan", "payload_nan", "payload_len", "payload_type", "element",
                                 "arity", "entries")))
    if what == "name":
        entry[0] = draw(st.one_of(scalars, st.sampled_from(["", "x" * 257, "net.1.weight"])))
    elif what == "dup_name":
        entry[0] = entries[draw(st.integers(0, len(entries) - 1))][0] if i else entries[-1][0]
    elif what == "shape":
        entry[1] = draw(st.one_of(st.sampled_from(HOSTILE_SHAPES),
                                  st.lists(st.sampled_from(HOSTILE_INTS), max_size=9)))
    elif what == "dtype":
        entry[2] = draw(st.sampled_from(DTYPE_NAMES + BAD_DTYPES))
    elif what == "codec":
        entry[3] = draw(st.sampled_from(tuple(codecs.available()) + UNKNOWN_CODECS))
    elif what == "params":
        codec = entry[3] if isinstance(entry[3], str) else ""
        if draw(st.booleans()):  # another codec's valid-looking params, or none
            other = draw(st.sampled_from([e[4] for e in entries if isinstance(e, list) and len(e) == 6]))
            entry[4] = dict(other) if isinstance(other, dict) else other
        base = entry[4] if isinstance(entry[4], dict) else {}
        entry[4] = draw(hostile_params(codec, base))
    elif what == "payload_nan":
        _poison_payload(draw, entry)
    elif what == "payload_len":
        # An earlier mutation may have made the payload something other than bytes.
        payload = entry[5] if isinstance(entry[5], bytes) else b""
        cut = draw(st.integers(-8, 8))
        entry[5] = payload[:cut] if cut < 0 else payload + draw(st.binary(min_size=cut, max_size=cut))
    elif what == "payload_type":
        entry[5] = draw(st.one_of(scalars, st.just(bytearray(4).hex())))
    elif what == "element":
        entry[draw(st.integers(0, 5))] = draw(msgpack_values)
    elif what == "arity":
        if draw(st.booleans()):
            entry.append(draw(scalars))
        else:
            entry.pop(draw(st.integers(0, 5)))
    else:  # the tensor list itself
        how = draw(st.sampled_from(("swap", "reverse", "drop", "duplicate", "many", "empty")))
        if how == "swap":
            j = draw(st.integers(0, len(entries) - 1))
            entries[i], entries[j] = entries[j], entries[i]
        elif how == "reverse":
            entries.reverse()
        elif how == "drop":
            entries.pop(i)
        elif how == "duplicate":
            entries.insert(i, copy.deepcopy(entry))
        elif how == "many":  # beyond max_tensors, with distinct names
            entries.extend([[f"x{k}", [1], "float32", "fp32", {}, b"\x00\x00\x80\x3f"]
                            for k in range(draw(st.sampled_from((16, 4097))))])
        else:
            entries.clear()


def _mutate_header(draw: st.DrawFn, obj: dict[str, Any]) -> None:
    key = draw(st.sampled_from(HEADER_KEYS))
    action = draw(st.sampled_from(("set", "set", "set", "delete", "link", "flags")))
    if action == "delete":
        obj.pop(key, None)
    elif action == "flags":  # one-way / no-model, with or without the tensors a no-model packet must lack
        obj["ow"], obj["nm"] = draw(st.booleans()), draw(st.booleans())
        if draw(st.booleans()):
            obj["t"] = []
    elif action == "link":
        obj["lk"] = [draw(st.sampled_from(HOSTILE_INTS)), draw(st.sampled_from(HOSTILE_INTS)),
                     draw(st.sampled_from((True, False, 0, 1, None)))][:draw(st.integers(0, 3))]
        if draw(st.booleans()):
            obj["lk"].extend([True] * (3 - len(obj["lk"])))
    elif key in ("cp", "tm"):
        obj[key] = draw(st.one_of(
            st.dictionaries(st.text(max_size=8), scalars, max_size=4),
            st.dictionaries(st.text(max_size=4), scalars, min_size=17, max_size=20),
            msgpack_values))
    else:
        obj[key] = draw(st.one_of(scalars, msgpack_values))


def _refingerprint(obj: dict[str, Any]) -> None:
    """What an attacker does to get past the fingerprint check: recompute it."""
    try:
        specs = [TensorSpec(e[0], tuple(e[1]), e[2]) for e in obj["t"]]
        obj["fp"] = fingerprint(specs)
    except Exception:  # noqa: BLE001 - the mutation made the specs unhashable/unpackable: leave it
        pass


@st.composite
def field_mutants(draw: st.DrawFn) -> tuple[Seed, bytes]:
    seed = draw(seed_packets)
    obj = msgpack.unpackb(seed.data, raw=False)
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.integers(0, 3)) == 0:
            _mutate_header(draw, obj)
        else:
            _mutate_entry(draw, obj, seed)
    if draw(st.integers(0, 9)) < 8:
        _refingerprint(obj)
    if not params_packable(obj):
        return seed, seed.data[:-1]
    return seed, msgpack.packb(obj, use_bin_type=True)


@fuzz("packet_field_mutations", mutant=field_mutants())
def test_packets_with_hostile_fields_decode_to_a_packet_or_a_typed_error(mutant: tuple[Seed, bytes]) -> None:
    seed, data = mutant
    _decode_both("packet_field_mutations", data, seed)


# --- known findings (strict xfail: the mark comes off with the fix) ---------------------------

def _handmade(entries: list[list[Any]], **header: Any) -> bytes:
    specs = [TensorSpec(e[0], tuple(e[1]), e[2]) for e in entries]
    obj = {"v": 1, "id": "x", "addr": "x:1", "fp": fingerprint(specs), "mv": 0, "age": 0, "n": 1,
           "codec": "fp32", "cp": {}, "t": entries}
    obj.update(header)
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize("field", ["tm", "cp"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_header_scalar_maps_hold_only_finite_numbers(field: str, value: float) -> None:
    data = _handmade([["w", [2], "float32", "fp32", {}, b"\x00" * 8]], **{field: {"steps": value}})
    result = decode_or_error(data, expected=None, limits=DEFAULT_LIMITS)
    if not isinstance(result, WireError):
        floats = [v for v in (*result.header.telemetry.values(), *result.header.codec_params.values())
                  if isinstance(v, float)]
        assert all(math.isfinite(v) for v in floats), floats


def test_bool_tensors_decode_to_canonical_bytes() -> None:
    data = _handmade([["mask", [3], "bool", "raw", {}, b"\x02\x01\xff"]])
    result = decode_or_error(data, expected=None, limits=DEFAULT_LIMITS)
    if not isinstance(result, WireError):
        assert set(result.tensors["mask"].view(np.uint8).tolist()) <= {0, 1}


def test_decoded_size_without_an_expected_model_is_bounded_by_the_limits() -> None:
    blob = zstandard.ZstdCompressor().compress(b"")
    n = 1 << 16
    entries = [[f"t{i}", [n], "float32", "topk", {"k": 0, "iw": 1, "il": len(blob)}, blob] for i in range(8)]
    data = _handmade(entries)
    limits = Limits(max_packet_bytes=4096, max_tensor_elements=n)
    tracemalloc.start()
    try:
        result = decode_or_error(data, expected=None, limits=limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    if not isinstance(result, WireError):
        total = sum(x.nbytes for x in result.tensors.values())
        # A packet-wide bound: no more than one maximal tensor (or the packet size) in all.
        assert total <= max(limits.max_packet_bytes, 4 * limits.max_tensor_elements), total
    assert peak <= 2 * max(limits.max_packet_bytes, 4 * limits.max_tensor_elements), peak
