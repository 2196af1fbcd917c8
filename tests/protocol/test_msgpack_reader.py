"""The bounded msgpack reader both wire codecs share: every fault it can find comes out
as its own typed reason, lengths are refused before the bytes they declare are looked
for, and on valid input it reads what msgpack reads."""

from __future__ import annotations

import msgpack
import pytest

from protocol.errors import MalformedPacket, PacketTooLarge, TruncatedPacket
from protocol.membership.wire import MembershipLimits, from_wire
from protocol.msgpack_reader import Fault, Kind, MsgpackError, Reader, ReadLimits, unpack

LIMITS = ReadLimits(max_str=8, max_array=4, max_map=2, max_bin=6, max_ext=3, max_depth=3)


def fault_of(data: bytes, limits: ReadLimits = LIMITS) -> tuple[Fault, Kind | None]:
    with pytest.raises(MsgpackError) as caught:
        unpack(data, limits)
    return caught.value.fault, caught.value.kind


@pytest.mark.parametrize(("data", "fault", "kind"), [
    (b"\xa5ab", Fault.TRUNCATED, None),                          # a 5-byte string, 2 bytes there
    (b"\xcd\x01", Fault.TRUNCATED, None),                        # a uint16 cut in half
    (b"\x92\x01", Fault.TRUNCATED, None),                        # an array missing its second item
    (b"", Fault.TRUNCATED, None),
    (msgpack.packb(1) + b"\x00", Fault.TRAILING, None),
    (msgpack.packb("x" * 9), Fault.TOO_LARGE, Kind.STR),
    (msgpack.packb(b"x" * 7, use_bin_type=True), Fault.TOO_LARGE, Kind.BIN),
    (msgpack.packb([0] * 5), Fault.TOO_LARGE, Kind.ARRAY),
    (msgpack.packb({"a": 0, "b": 1, "c": 2}), Fault.TOO_LARGE, Kind.MAP),
    (msgpack.packb(msgpack.ExtType(1, b"abcd")), Fault.TOO_LARGE, Kind.EXT),
    (b"\x91\x91\x91\x91\xc0", Fault.TOO_DEEP, None),
    (b"\xc1", Fault.UNSUPPORTED, None),                          # the one byte msgpack never uses
    (b"\xa1\xff", Fault.INVALID, None),                          # not UTF-8
    (b"\x81\x01\x02", Fault.INVALID, None),                      # {1: 2}: an integer map key
    (b"\xc7\x00\xff", Fault.INVALID, None),                      # an empty timestamp extension
])
def test_each_fault_is_reported_as_its_own_reason(data: bytes, fault: Fault, kind: Kind | None) -> None:
    assert fault_of(data) == (fault, kind)


def test_a_declared_length_is_refused_before_the_bytes_it_declares_are_looked_for() -> None:
    # 4 GiB declared, 3 bytes present: the limit answers, not the end of the input.
    assert fault_of(b"\xdb\xff\xff\xff\xffabc") == (Fault.TOO_LARGE, Kind.STR)
    assert fault_of(b"\xdd\xff\xff\xff\xff") == (Fault.TOO_LARGE, Kind.ARRAY)
    assert fault_of(b"\xc6\xff\xff\xff\xff") == (Fault.TOO_LARGE, Kind.BIN)


def test_extensions_are_unsupported_unless_a_length_is_allowed() -> None:
    ext = msgpack.packb(msgpack.ExtType(5, b"ab"))
    assert fault_of(ext, ReadLimits(max_str=8, max_array=4, max_map=2)) == (Fault.UNSUPPORTED, None)
    assert unpack(ext, LIMITS) == msgpack.ExtType(5, b"ab")


def test_read_array_header_refuses_another_type_and_a_long_array() -> None:
    with pytest.raises(MsgpackError) as caught:
        Reader(msgpack.packb("x"), LIMITS).read_array_header()
    assert caught.value.fault is Fault.NOT_ARRAY
    with pytest.raises(MsgpackError) as caught:
        Reader(msgpack.packb(list(range(5))), LIMITS).read_array_header()
    assert (caught.value.fault, caught.value.kind) == (Fault.TOO_LARGE, Kind.ARRAY)


def test_values_are_read_one_after_another_and_bins_are_views() -> None:
    data = msgpack.packb([1, "ab", None], use_bin_type=True) + msgpack.packb(b"xyz", use_bin_type=True)
    reader = Reader(data, LIMITS)
    assert reader.read_array_header() == 3
    assert [reader.read() for _ in range(3)] == [1, "ab", None]
    blob = reader.read()
    assert isinstance(blob, memoryview) and blob.readonly and bytes(blob) == b"xyz"
    assert reader.at_end


def test_valid_values_read_as_msgpack_reads_them() -> None:
    value = {"a": [1, -1, 2**64 - 1, -(2**63), 1.5, True, False, None, "ü"], "b": {}}
    data = msgpack.packb(value)
    limits = ReadLimits(max_str=16, max_array=16, max_map=4)
    assert unpack(data, limits) == msgpack.unpackb(data, raw=False, strict_map_key=True)


def test_the_membership_codec_maps_the_reasons_to_its_refusals() -> None:
    # A string or array over its limit is too large; a map, binary or extension (none
    # is part of the format) is malformed; a cut message is truncated.
    assert_refusal(msgpack.packb([1, 1, 1, "a" * 300, "b", []]), PacketTooLarge)
    assert_refusal(msgpack.packb([1, 1, 1, {"k": 1}, "b", []]), MalformedPacket)
    assert_refusal(msgpack.packb([1, 1, 1, b"a", "b", []], use_bin_type=True), MalformedPacket)
    assert_refusal(msgpack.packb([1, 1, 1, "a", "b", []])[:-3], TruncatedPacket)
    assert_refusal(msgpack.packb(["x" * 10]), PacketTooLarge, MembershipLimits(max_string=5))


def assert_refusal(data: bytes, error: type[Exception], limits: MembershipLimits = MembershipLimits()) -> None:
    with pytest.raises(error):
        from_wire(data, limits)


def test_the_fast_path_and_the_reader_agree_on_values_and_faults() -> None:
    """Without binaries, ``unpack`` takes msgpack's C unpacker for valid input: on seeded
    random and corrupted inputs (nesting around the depth bound, truncations, flipped
    bytes) it must return what the reader returns, or refuse with the reader's fault."""
    import random

    limits = ReadLimits(max_str=8, max_array=6, max_map=0, max_bin=0, max_ext=0, max_depth=4)
    rng = random.Random(7)

    def value(depth: int) -> object:
        roll = rng.random()
        if depth > 6 or roll < 0.3:
            return rng.choice([1, "ab", "x" * 9, None, True, 2.5, -7, 2**40])
        if roll < 0.4:
            return []
        return [value(depth + 1) for _ in range(rng.randint(1, 7))]

    def outcome(data: bytes, writable: bool) -> tuple[str, object]:
        try:
            return ("value", unpack(data, limits, writable=writable))  # writable: the reader alone
        except MsgpackError as e:
            return ("fault", (e.fault, e.kind))

    seen = set()
    for _ in range(5000):
        data = msgpack.packb(value(0))
        if rng.random() < 0.4:
            corrupt = bytearray(data)
            corrupt[rng.randrange(len(corrupt))] = rng.randrange(256)
            data = bytes(corrupt[: rng.randrange(len(corrupt) + 1)] if rng.random() < 0.5 else corrupt)
        fast, reader = outcome(data, False), outcome(data, True)
        assert fast == reader, data
        seen.add(fast[0] if fast[0] == "value" else fast[1][0])
    assert {"value", Fault.TOO_DEEP, Fault.TOO_LARGE, Fault.TRUNCATED} <= seen
