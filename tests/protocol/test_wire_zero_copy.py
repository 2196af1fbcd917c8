"""Copy-free framing: the same bytes as msgpack/protobuf, decoded tensors that view the packet,
and frames that slice it; hostile bytes still end in typed errors."""

from __future__ import annotations

import asyncio

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hearsay.v1 import gossip_pb2
from peer.transport.frames import RawFrame, parse_frame, read_packet, serialize_frame, to_frames, to_raw_frames
from protocol import codecs
from protocol.errors import MalformedPacket, TruncatedPacket, WireError
from protocol.wire import (
    FRAME_BYTES,
    Limits,
    PacketHeader,
    decode_packet,
    encode_packet,
    encode_packet_parts,
    fingerprint,
    specs_of,
)


def model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "big": rng.standard_normal((700, 600)).astype(np.float32),     # bin32 payload, several frames
        "mid": rng.standard_normal(5000).astype(np.float32),           # 20000 bytes: bin16
        "tiny": rng.standard_normal(3).astype(np.float32),             # bin8
        "empty": np.zeros((0, 4), np.float32),
        "count": np.array(7, dtype=np.int64),
    }


def header(tensors: dict[str, np.ndarray]) -> PacketHeader:
    return PacketHeader(sender_id="a", sender_addr="127.0.0.1:1", fingerprint=fingerprint(specs_of(tensors)),
                        model_version=3, age=2, samples=100, codec_params={"r": 0.5}, telemetry={"acc": 0.9},
                        link_epoch=5, link_seq=2, keyframe=False, need_keyframe=True)


def choose(_name: str, x: np.ndarray) -> codecs.Codec:
    return codecs.get("fp32") if x.dtype.kind == "f" else codecs.get("raw")


def reference_packb(h: PacketHeader, tensors: dict[str, np.ndarray]) -> bytes:
    """The packet as the original implementation wrote it: one ``msgpack.packb``."""
    entries = []
    for name, x in tensors.items():
        enc = choose(name, x).encode(x)
        entries.append([name, list(x.shape), np.dtype(x.dtype).name, choose(name, x).name, enc.params, enc.payload])
    return msgpack.packb({
        "v": h.format_version, "id": h.sender_id, "addr": h.sender_addr, "fp": h.fingerprint,
        "mv": h.model_version, "age": h.age, "n": h.samples, "codec": h.codec, "cp": h.codec_params,
        "tm": h.telemetry, "lk": [h.link_epoch, h.link_seq, h.keyframe], "nk": h.need_keyframe, "t": entries,
    }, use_bin_type=True)


def test_encode_packet_writes_exactly_what_packb_wrote() -> None:
    tensors = model()
    data = encode_packet(header(tensors), tensors, choose)
    assert isinstance(data, bytes)
    assert data == reference_packb(header(tensors), tensors)
    assert b"".join(encode_packet_parts(header(tensors), tensors, choose)) == data


def test_decoded_fp32_tensors_are_read_only_views_of_the_packet() -> None:
    tensors = model()
    buf = bytearray(encode_packet(header(tensors), tensors, choose))
    packet = decode_packet(buf, expected=specs_of(tensors))
    big = packet.tensors["big"]
    np.testing.assert_array_equal(big, tensors["big"])
    assert not big.flags.writeable
    assert np.shares_memory(big, np.frombuffer(buf, np.uint8))
    assert packet.header.fingerprint == fingerprint(specs_of(tensors)) and isinstance(packet.header.fingerprint, bytes)
    assert packet.header.need_keyframe and packet.header.link_seq == 2 and packet.header.codec_params == {"r": 0.5}


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats(allow_nan=False, width=32)
    | st.text(max_size=80) | st.binary(max_size=300),
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=10), inner, max_size=20),
    max_leaves=40)


def plain(x: object) -> object:
    if isinstance(x, memoryview):
        return bytes(x)
    if isinstance(x, list):
        return [plain(v) for v in x]
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    return x


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgpack_values, st.booleans())
def test_the_reader_agrees_with_msgpack_on_valid_input(value: object, single_float: bool) -> None:
    from protocol.wire import _unpack

    data = msgpack.packb(value, use_bin_type=True, use_single_float=single_float)
    try:
        expected = msgpack.unpackb(data, raw=False, strict_map_key=True, max_str_len=256, max_array_len=4096,
                                   max_map_len=16, max_bin_len=len(data), max_ext_len=0)
    except ValueError:
        with pytest.raises(WireError):
            _unpack(data, Limits())
        return
    assert plain(_unpack(data, Limits())) == expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64))
def test_the_reader_turns_any_bytes_into_a_value_or_a_typed_error(data: bytes) -> None:
    from protocol.wire import _unpack

    try:
        _unpack(data, Limits())
    except WireError:
        pass


def test_deep_nesting_and_ext_types_are_malformed() -> None:
    from protocol.wire import _unpack

    with pytest.raises(MalformedPacket):
        _unpack(b"\x91" * 100 + b"\xc0", Limits())
    with pytest.raises(MalformedPacket):
        _unpack(msgpack.packb(msgpack.ExtType(1, b"x")), Limits())
    with pytest.raises(TruncatedPacket):
        _unpack(b"\xc6\x00\x10\x00\x00abc", Limits())


@pytest.mark.parametrize("data,end", [(b"", False), (b"", True), (b"x", False), (b"abc" * 1000, True),
                                      (bytes(FRAME_BYTES), True)])
def test_frame_serialisation_is_protobufs(data: bytes, end: bool) -> None:
    wire = serialize_frame(RawFrame(memoryview(data), end))
    assert wire == gossip_pb2.Frame(data=data, end=end).SerializeToString()
    parsed = parse_frame(wire)
    assert bytes(parsed.data) == data and parsed.end == end and not parsed.error
    assert gossip_pb2.Frame.FromString(wire) == gossip_pb2.Frame(data=data, end=end)


def test_parse_frame_skips_unknown_fields_and_flags_malformed_ones() -> None:
    known = gossip_pb2.Frame(data=b"abc", end=True).SerializeToString()
    unknown = b"\x18\x05" + b"\x22\x02zz" + b"\x29" + bytes(8) + b"\x35" + bytes(4)  # fields 3, 4, 5, 6
    parsed = parse_frame(unknown + known)
    assert bytes(parsed.data) == b"abc" and parsed.end and not parsed.error
    for bad in (b"\x0a\x05ab", b"\x0a", b"\x08\xff", b"\x0b", b"\x12\x01x", b"\x10" + b"\xff" * 11):
        assert parse_frame(bad).error, bad


def test_frames_slice_parts_within_the_limit_and_reassemble() -> None:
    tensors = model()
    parts = encode_packet_parts(header(tensors), tensors, choose)
    whole = b"".join(parts)
    for frames in (list(to_raw_frames(parts)), list(to_raw_frames(whole)), list(to_frames(parts))):
        assert all(len(f.data) <= FRAME_BYTES for f in frames)
        assert [f.end for f in frames] == [False] * (len(frames) - 1) + [True]
        assert b"".join(bytes(f.data) for f in frames) == whole
    assert len(list(to_raw_frames(parts))) <= len(whole) // FRAME_BYTES + 3  # small parts are gathered
    assert [bytes(f.data) for f in to_raw_frames(b"")] == [b""]

    async def stream(frames):
        for f in frames:
            yield parse_frame(serialize_frame(f))
    buf = asyncio.run(read_packet(stream(to_raw_frames(parts)), max_bytes=len(whole)))
    assert buf == whole

    async def direct(frames):
        for f in frames:
            yield f
    with pytest.raises(MalformedPacket):
        asyncio.run(read_packet(direct([RawFrame(b"x"), parse_frame(b"\x0a\x09ab")]), max_bytes=10))


def test_a_packet_of_many_frames_is_reassembled_into_one_writable_buffer() -> None:
    # Larger than the reassembly's huge-page threshold and no multiple of the frame size, so the
    # buffer grows several times (mremap) and ends at the exact packet size.
    whole = np.random.default_rng(3).integers(0, 256, 9 * FRAME_BYTES + 12345, dtype=np.uint8).tobytes()

    async def stream():
        for f in to_raw_frames(whole):
            yield parse_frame(serialize_frame(f))
    for declared in (None, len(whole)):
        buf = asyncio.run(read_packet(stream(), max_bytes=len(whole), declared=declared))
        assert isinstance(buf, memoryview) and not buf.readonly and buf.nbytes == len(whole)
        assert buf == whole
    with pytest.raises(TruncatedPacket):
        asyncio.run(read_packet(stream(), max_bytes=len(whole) + 1, declared=len(whole) + 1))
