"""Wire framing: round trips, and every way a packet can be wrong gives a typed error."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import codecs
from protocol.errors import (
    FingerprintMismatch,
    MalformedPacket,
    NonFiniteValues,
    PacketTooLarge,
    SizeMismatch,
    TruncatedPacket,
    UnknownCodec,
    UnsupportedVersion,
    WireError,
)
from protocol.wire import (
    FRAME_BYTES,
    Limits,
    PacketHeader,
    decode_packet,
    encode_no_model,
    encode_packet,
    fingerprint,
    specs_of,
)
from tests.protocol.frames import split_frames


def model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "layer.weight": rng.standard_normal((16, 8)).astype(np.float32),
        "layer.bias": rng.standard_normal(16).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
    }


def choose(_name: str, x: np.ndarray) -> codecs.Codec:
    return codecs.get("fp32") if x.dtype.kind == "f" else codecs.get("raw")


def packet_bytes(tensors: dict[str, np.ndarray], **header_overrides: object) -> bytes:
    fields = dict(sender_id="a", sender_addr="127.0.0.1:1", fingerprint=fingerprint(specs_of(tensors)),
                  model_version=3, age=2, samples=100)
    fields.update(header_overrides)
    return encode_packet(PacketHeader(**fields), tensors, choose)  # type: ignore[arg-type]


def raw_packet(tensors: dict[str, np.ndarray]) -> dict:
    return msgpack.unpackb(packet_bytes(tensors), raw=False)


def test_round_trip_preserves_header_and_tensors_exactly() -> None:
    tensors = model()
    packet = decode_packet(packet_bytes(tensors), expected=specs_of(tensors))
    assert packet.header.sender_id == "a" and packet.header.samples == 100 and packet.header.age == 2
    assert list(packet.tensors) == list(tensors)
    for name, x in tensors.items():
        assert packet.tensors[name].dtype == x.dtype
        np.testing.assert_array_equal(packet.tensors[name], x)


def test_fingerprint_depends_on_names_shapes_and_dtypes() -> None:
    base = specs_of(model())
    renamed = specs_of({("x" + k): v for k, v in model().items()})
    reshaped = specs_of({k: v.reshape(-1) if v.ndim == 2 else v for k, v in model().items()})
    retyped = specs_of({k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in model().items()})
    prints = {fingerprint(s) for s in (base, renamed, reshaped, retyped)}
    assert len(prints) == 4
    assert fingerprint(specs_of(model(1))) == fingerprint(base)  # values do not matter


def test_wrong_architecture_is_a_fingerprint_mismatch_naming_the_tensor() -> None:
    other = {"layer.weight": np.zeros((4, 4), np.float32)}
    with pytest.raises(FingerprintMismatch, match="layer.weight"):
        decode_packet(packet_bytes(other), expected=specs_of(model()))


def test_truncated_packet_is_typed_at_every_cut() -> None:
    data = packet_bytes(model())
    for cut in (1, 10, len(data) // 2, len(data) - 1):
        with pytest.raises((TruncatedPacket, MalformedPacket)):
            decode_packet(data[:cut], expected=specs_of(model()))
    with pytest.raises(TruncatedPacket):
        decode_packet(data[: len(data) // 2])


def test_non_finite_values_are_refused() -> None:
    for bad in (np.nan, np.inf, -np.inf):
        tensors = model()
        tensors["layer.bias"][3] = bad
        with pytest.raises(NonFiniteValues, match="layer.bias"):
            decode_packet(packet_bytes(tensors), expected=specs_of(model()))


def test_unknown_format_version_is_refused() -> None:
    obj = raw_packet(model())
    for v in (0, 2, "1", None, True):
        obj["v"] = v
        with pytest.raises(UnsupportedVersion):
            decode_packet(msgpack.packb(obj, use_bin_type=True))


def test_payload_shorter_or_longer_than_declared_is_a_size_mismatch() -> None:
    for delta in (-4, 4):
        obj = raw_packet(model())
        payload = obj["t"][0][5]
        obj["t"][0][5] = payload[:delta] if delta < 0 else payload + b"\0" * delta
        with pytest.raises(SizeMismatch):
            decode_packet(msgpack.packb(obj, use_bin_type=True))


def test_oversized_declarations_are_refused_before_allocation() -> None:
    obj = raw_packet(model())
    obj["t"][0][1] = [1 << 20, 1 << 20]  # 2^40 elements declared, a few bytes sent
    with pytest.raises(PacketTooLarge):
        decode_packet(msgpack.packb(obj, use_bin_type=True))
    with pytest.raises(PacketTooLarge):
        decode_packet(packet_bytes(model()), limits=Limits(max_packet_bytes=100))


def test_schema_violations_are_malformed() -> None:
    cases = []
    for key, value in (("id", 5), ("n", -1), ("n", True), ("fp", b"short"), ("t", {}), ("cp", [1])):
        obj = raw_packet(model())
        obj[key] = value
        cases.append(obj)
    obj = raw_packet(model())
    obj["t"].append(obj["t"][0])  # duplicate tensor
    cases.append(obj)
    obj = raw_packet(model())
    obj["t"][0][2] = "object"  # dtype numpy would happily interpret
    cases.append(obj)
    obj = raw_packet(model())
    del obj["mv"]
    cases.append(obj)
    for case in cases:
        with pytest.raises(MalformedPacket):
            decode_packet(msgpack.packb(case, use_bin_type=True))


def test_unknown_codec_and_codec_params_are_refused() -> None:
    obj = raw_packet(model())
    obj["t"][0][3] = "zip-of-doom"
    with pytest.raises(UnknownCodec):
        decode_packet(msgpack.packb(obj, use_bin_type=True))
    obj = raw_packet(model())
    obj["t"][0][4] = {"scale": 2.0}
    with pytest.raises(UnknownCodec):
        decode_packet(msgpack.packb(obj, use_bin_type=True))


def test_trailing_bytes_and_non_map_packets_are_malformed() -> None:
    with pytest.raises(MalformedPacket):
        decode_packet(packet_bytes(model()) + b"\x00")
    for obj in ([1, 2, 3], 42, "packet"):
        with pytest.raises(MalformedPacket):
            decode_packet(msgpack.packb(obj))


def test_split_frames_bounds_every_frame_and_reassembles() -> None:
    data = bytes(range(256)) * ((3 * FRAME_BYTES) // 256 + 7)
    frames = list(split_frames(data))
    assert all(len(f) <= FRAME_BYTES for f in frames) and len(frames) == 4
    assert b"".join(frames) == data
    assert [bytes(f) for f in split_frames(b"")] == [b""]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_escape_as_untyped_errors(data: bytes) -> None:
    try:
        decode_packet(data, expected=specs_of(model()))
    except WireError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_valid_packets_decode_or_fail_typed(data: st.DataObject) -> None:
    raw = bytearray(packet_bytes(model()))
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    try:
        packet = decode_packet(bytes(raw), expected=specs_of(model()))
    except WireError:
        return
    for x in packet.tensors.values():  # whatever got through is well-formed and finite
        assert x.dtype.kind != "f" or np.isfinite(x).all()


def test_sparse_decoding_keeps_top_k_entries_and_refuses_non_finite_ones() -> None:
    from protocol.codecs.base import SparseTensor

    tensors = {name: x * 1 for name, x in model().items()}
    flat = next(n for n, x in tensors.items() if x.dtype.kind == "f" and x.size >= 8)
    codec = codecs.make("topk", ratio=0.25, seed=1)
    chooser = (lambda _n, x: codec if x.dtype.kind == "f" else codecs.get("raw"))
    header = PacketHeader(sender_id="a", sender_addr="a:1", fingerprint=fingerprint(specs_of(tensors)),
                          model_version=1, age=0, samples=1, codec="topk")
    packet = decode_packet(encode_packet(header, tensors, chooser), expected=specs_of(model()), sparse=True)
    dense = decode_packet(encode_packet(header, tensors, chooser), expected=specs_of(model()))
    assert isinstance(packet.tensors[flat], SparseTensor)
    assert packet.specs() == dense.specs()
    for name, x in packet.tensors.items():
        got = x.dense() if isinstance(x, SparseTensor) else x
        assert got.tobytes() == dense.tensors[name].tobytes()
    tensors[flat].reshape(-1)[np.argmax(np.abs(tensors[flat]))] = np.inf  # the largest entry: always sent
    with pytest.raises(NonFiniteValues, match=flat):
        decode_packet(encode_packet(header, tensors, chooser), expected=specs_of(model()), sparse=True)


# --- one-way packets and answers without a model ----------------------------------------------

def test_the_one_way_and_no_model_flags_are_written_only_when_set() -> None:
    """Every packet that sets neither flag is byte for byte what it was before them."""
    assert not {"ow", "nm"} & set(raw_packet(model()))
    one_way = decode_packet(packet_bytes(model(), one_way=True), expected=specs_of(model()))
    assert one_way.header.one_way and one_way.header.carries_model and set(one_way.tensors) == set(model())
    assert msgpack.unpackb(packet_bytes(model(), one_way=True))["ow"] is True


def test_an_answer_without_a_model_is_header_only_and_checks_the_architecture() -> None:
    header = PacketHeader(sender_id="b", sender_addr="127.0.0.1:2", fingerprint=fingerprint(specs_of(model())),
                          model_version=4, age=9, samples=50, telemetry={"round": 3}, need_keyframe=True,
                          link_epoch=7, link_seq=2)
    data = encode_no_model(header)
    assert len(data) < 200  # the header alone
    packet = decode_packet(data, expected=specs_of(model()))
    h = packet.header
    assert packet.tensors == {} and not h.carries_model and not h.one_way
    assert (h.need_keyframe, h.telemetry, h.samples) == (True, {"round": 3}, 50)
    assert (h.link_epoch, h.link_seq, h.keyframe) == (0, 0, False)  # no link frame: no replica moves
    other = {"other.weight": np.zeros((3, 3), np.float32)}
    with pytest.raises(FingerprintMismatch):
        decode_packet(data, expected=specs_of(other))


def test_malformed_flag_combinations_are_refused() -> None:
    def with_fields(**fields: object) -> bytes:
        obj = raw_packet(model())
        obj.update(fields)
        return msgpack.packb(obj, use_bin_type=True)

    for fields in ({"ow": 1}, {"nm": "yes"}, {"ow": None}, {"nm": True}, {"nm": True, "t": [], "ow": True}):
        with pytest.raises(MalformedPacket):  # {"nm": True} with tensors: a no-model packet carrying a model
            decode_packet(with_fields(**fields), expected=specs_of(model()))
    with pytest.raises(ValueError):
        encode_packet(PacketHeader(sender_id="a", sender_addr="a:1", fingerprint=b"\0" * 16, model_version=0,
                                   age=0, samples=1, carries_model=False), model(), choose)
