"""Codecs: error bounds of decode(encode(x)), unbiased stochastic rounding, exact sparse
selections, and typed errors for every way a hostile payload or parameter can be wrong."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import codecs
from protocol.codecs import indices, quant, sparse
from protocol.codecs.randk import positions
from protocol.errors import MalformedPacket, SizeMismatch, UnknownCodec, WireError
from protocol.wire import PacketHeader, decode_packet, encode_packet, fingerprint, specs_of

LOSSY = ["fp16", "int8", "int4", "topk", "topk_int8", "randk"]
SEEDED = ["int8", "int4", "topk", "topk_int8", "randk"]
FAST = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def encoder(name: str, **options: object) -> codecs.Codec:
    return codecs.make(name, seed=7, **options) if name in SEEDED else codecs.make(name)


def roundtrip(name: str, x: np.ndarray, **options: object) -> tuple[np.ndarray, codecs.Encoded]:
    enc = encoder(name, **options).encode(x)
    out = codecs.get(name).decode(enc.payload, x.shape, x.dtype, enc.params)
    return out, enc


def gaussian(n: int, seed: int = 0, scale: float = 1e-3) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


# Sizes that exercise an empty tensor, a partial chunk, several blocks and the sampled
# (not exact) top-k path (n >= sparse.EXACT_BELOW).
SIZES = [0, 1, 7, 513, 4097, 70_001, 600_000]


# --- registry and policy ------------------------------------------------------------------------

def test_every_codec_the_daemon_can_name_is_registered() -> None:
    assert set(codecs.available()) >= {"raw", "fp32", "fp16", "int8", "int4", "topk", "topk_int8", "randk"}


def test_unknown_codec_name_is_a_typed_error() -> None:
    with pytest.raises(UnknownCodec):
        codecs.get("zip")
    with pytest.raises(UnknownCodec):
        codecs.make("zip")


def test_make_passes_encode_options_and_the_registered_instance_decodes_them() -> None:
    x = gaussian(60_000)
    out, enc = roundtrip("topk", x, ratio=0.001)
    assert enc.params["k"] == 60
    assert np.count_nonzero(out) == 60


def test_size_adaptive_policy_sends_small_and_integer_tensors_exactly() -> None:
    policy = codecs.policy("topk_int8", ratio=0.01)
    assert policy("w", np.zeros((128, 128), np.float32)).name == "topk_int8"
    assert policy("b", np.zeros(128, np.float32)).name == "fp32"
    assert policy("n", np.zeros((), np.int64)).name == "raw"
    assert policy("m", np.zeros(10_000, np.bool_)).name == "raw"
    assert codecs.policy("int8", min_elements=10)("b", np.zeros(128, np.float32)).name == "int8"


# --- error bounds -------------------------------------------------------------------------------

@pytest.mark.parametrize("n", SIZES)
def test_fp16_error_is_within_half_precision_rounding(n: int) -> None:
    x = gaussian(n, scale=3.0)
    out, enc = roundtrip("fp16", x)
    assert len(enc.payload) == 2 * n
    assert np.all(np.abs(out - x) <= np.abs(x) * 2.0 ** -11 + 2.0 ** -24)


def test_fp16_saturates_instead_of_overflowing_to_infinity() -> None:
    out, _ = roundtrip("fp16", np.array([1e6, -1e6, 1.0], np.float32))
    assert np.all(np.isfinite(out))
    assert out[0] == 65504.0 and out[1] == -65504.0


@pytest.mark.parametrize("name,qmax", [("int8", 127), ("int4", 7)])
@pytest.mark.parametrize("n", SIZES)
def test_quantised_error_is_below_one_step_of_its_chunk(name: str, qmax: int, n: int) -> None:
    x = gaussian(n, seed=n)
    x[::97] *= 50  # outliers: each must only coarsen its own chunk
    out, enc = roundtrip(name, x)
    chunk = enc.params["c"]
    pad = -n % chunk
    absmax = np.abs(np.concatenate([x, np.zeros(pad, np.float32)])).reshape(-1, chunk).max(axis=1)
    step = np.repeat(absmax / qmax, chunk)[:n]
    assert np.all(np.abs(out - x) <= step * (1 + 1e-5))


@pytest.mark.parametrize("name,bound", [("int8", 0.012), ("int4", 0.2)])
def test_quantised_relative_error_on_gaussian_data(name: str, bound: float) -> None:
    x = gaussian(200_000)
    out, _ = roundtrip(name, x)
    assert np.linalg.norm(out - x) / np.linalg.norm(x) < bound


@pytest.mark.parametrize("name", ["int8", "int4", "topk_int8"])
def test_a_zero_tensor_decodes_to_zeros(name: str) -> None:
    out, _ = roundtrip(name, np.zeros(5000, np.float32))
    assert not np.any(out)


@pytest.mark.parametrize("name", LOSSY)
def test_shape_and_dtype_are_kept_and_input_layout_does_not_matter(name: str) -> None:
    base = gaussian(2 * 3000).reshape(3000, 2)
    x = base.T  # not contiguous
    out, enc = roundtrip(name, x)
    assert out.shape == x.shape and out.dtype == np.float32
    again = codecs.get(name).decode(enc.payload, x.shape, np.dtype(np.float64), enc.params)
    assert again.dtype == np.float64
    np.testing.assert_array_equal(again, out.astype(np.float64))


@pytest.mark.parametrize("name", SEEDED)
def test_the_same_seed_gives_the_same_payload(name: str) -> None:
    x = gaussian(100_000)
    a = codecs.make(name, seed=3).encode(x)
    b = codecs.make(name, seed=3).encode(x)
    c = codecs.make(name, seed=4).encode(x)
    assert a == b
    assert a != c


# --- sparse codecs ------------------------------------------------------------------------------

def _check_topk(x: np.ndarray, out: np.ndarray, k: int) -> None:
    sent = out != 0
    # Values at the sent positions are exact, everything else is zero...
    np.testing.assert_array_equal(out[sent], x[sent])
    # ...and no element left out is larger than one that was sent (magnitudes, not signs).
    if sent.any() and (~sent).any():
        assert np.abs(x[~sent]).max() <= np.abs(x[sent]).min()
    assert np.count_nonzero(sent) <= math.ceil(sparse.SLACK * k)


@pytest.mark.parametrize("n", SIZES[1:])
def test_topk_keeps_the_largest_magnitudes(n: int) -> None:
    x = gaussian(n, seed=n)
    x[x == 0] = 1e-9
    out, enc = roundtrip("topk", x, ratio=0.01)
    k = sparse.count_for(0.01, n)
    _check_topk(x, out, k)
    if n < sparse.EXACT_BELOW:
        assert enc.params["k"] == k
    else:  # the sampled threshold lands near k
        assert 0.8 * k <= enc.params["k"] <= sparse.SLACK * k


def test_topk_selects_large_negative_values() -> None:
    x = np.full(100_000, 1e-3, np.float32)
    x[123] = -5.0
    out, _ = roundtrip("topk", x, ratio=1e-5)
    assert out[123] == -5.0


@FAST
@given(st.integers(0, 2**32 - 1), st.sampled_from([1e-4, 0.003, 0.05]), st.sampled_from([0.0, 0.5, 0.99]))
def test_topk_on_ties_and_zeros_is_still_exact_and_bounded(seed: int, ratio: float, zero_share: float) -> None:
    rng = np.random.default_rng(seed)
    n = 80_000
    x = rng.integers(-3, 4, n).astype(np.float32)  # few distinct magnitudes: many ties
    x[rng.random(n) < zero_share] = 0
    out, enc = roundtrip("topk", x, ratio=ratio)
    k = sparse.count_for(ratio, n)
    assert enc.params["k"] <= math.ceil(sparse.SLACK * k)
    sent = out != 0
    np.testing.assert_array_equal(out[sent], x[sent])
    if sent.any() and (~sent).any():
        assert np.abs(x[~sent]).max() <= np.abs(x[sent]).min()


def test_topk_of_an_all_zero_delta_sends_nothing() -> None:
    _, enc = roundtrip("topk", np.zeros(200_000, np.float32))
    assert enc.params["k"] == 0


def test_topk_int8_sends_the_topk_positions_with_quantised_values() -> None:
    x = gaussian(300_000)
    plain, _ = roundtrip("topk", x)
    quantised, enc = roundtrip("topk_int8", x)
    np.testing.assert_array_equal(plain != 0, quantised != 0)
    step = np.abs(plain).max() / 127
    assert np.all(np.abs(quantised - plain) <= step)
    assert len(enc.payload) < 3 * enc.params["k"]  # ~1 byte of value + ~1.1 of index


def test_topk_indices_compress_below_two_bytes_each() -> None:
    _, enc = roundtrip("topk", gaussian(1_000_000))
    assert enc.params["il"] < 1.5 * enc.params["k"]


def test_randk_sends_k_distinct_positions_derived_from_the_seed_only() -> None:
    x = gaussian(10_000) + 1.0  # no zeros, so the sent positions are the nonzeros
    out, enc = roundtrip("randk", x, ratio=0.05)
    where = positions(enc.params["seed"], enc.params["k"], x.size)
    assert len(enc.payload) == 4 * 500 and enc.params["k"] == 500
    assert np.all(np.diff(where) > 0)
    np.testing.assert_array_equal(np.flatnonzero(out), where)
    np.testing.assert_array_equal(out[where], x[where])


def test_randk_picks_every_element_about_equally_often() -> None:
    n, k = 1000, 50
    hits = np.zeros(n)
    for seed in range(2000):
        hits[positions(seed, k, n)] += 1
    # Expected 100 per element; a fixed or aliased pattern would put 0 or 2000 somewhere.
    assert 50 < hits.min() and hits.max() < 160


@FAST
@given(st.lists(st.integers(0, 10**7), max_size=300, unique=True))
def test_index_coding_round_trips(values: list[int]) -> None:
    idx = np.array(sorted(values), np.int64)
    blob, width = indices.encode(idx)
    np.testing.assert_array_equal(indices.decode(blob, idx.size, width, 10**7 + 1), idx)


# --- unbiased stochastic rounding ---------------------------------------------------------------

@pytest.mark.parametrize("name,qmax", [("int8", 127), ("int4", 7)])
def test_stochastic_rounding_is_unbiased_over_seeds(name: str, qmax: int) -> None:
    # Each chunk's absmax is 1, so a step is 1/qmax; the other values sit 0.3 or 0.8 of a
    # step above a level, where rounding to nearest would be off by 0.3 steps on average.
    chunk = 256
    rng = np.random.default_rng(1)
    levels = rng.integers(-qmax + 1, qmax - 1, 4 * chunk)
    x = ((levels + rng.choice([0.3, 0.8], levels.size)) / qmax).astype(np.float32)
    x[::chunk] = 1.0
    codec = codecs.make(name, chunk=chunk, seed=11)
    runs = 600
    total = np.zeros(x.size)
    for _ in range(runs):
        enc = codec.encode(x)
        total += codecs.get(name).decode(enc.payload, x.shape, x.dtype, enc.params)
    bias_in_steps = (total / runs - x) * qmax
    # One sample's error has sd <= 0.5 steps, so the mean of 600 has sd <= 0.021 steps.
    assert np.abs(bias_in_steps).max() < 0.11
    assert abs(bias_in_steps.mean()) < 0.01


def test_noise_table_offsets_make_each_elements_rounding_noise_uniform() -> None:
    from protocol.codecs.noise import PERIOD, NoiseTable, block_offset

    table = NoiseTable(bias=0.0).values.numpy()
    assert sorted(table[:PERIOD]) == sorted((np.arange(PERIOD) + 0.5) / PERIOD)
    # For a fixed element, the noise it sees across seeds is spread over [0, 1).
    seen = np.array([table[block_offset(seed, 0) + 5] for seed in range(4000)])
    counts, _ = np.histogram(seen, bins=10, range=(0, 1))
    assert counts.min() > 300 and counts.max() < 500


# --- hostile input ------------------------------------------------------------------------------

def _valid(name: str, n: int = 5000) -> tuple[np.ndarray, codecs.Encoded]:
    x = gaussian(n, seed=2)
    return x, encoder(name).encode(x)


@pytest.mark.parametrize("name", LOSSY)
@pytest.mark.parametrize("delta", [-1, 1, -3, 64])
def test_a_payload_of_the_wrong_length_is_a_size_mismatch(name: str, delta: int) -> None:
    x, enc = _valid(name)
    payload = enc.payload[:delta] if delta < 0 else enc.payload + b"\0" * delta
    with pytest.raises(SizeMismatch):
        codecs.get(name).decode(payload, x.shape, x.dtype, enc.params)


@pytest.mark.parametrize("name", LOSSY)
def test_missing_or_unknown_params_are_an_unknown_codec(name: str) -> None:
    x, enc = _valid(name)
    with pytest.raises(UnknownCodec):
        codecs.get(name).decode(enc.payload, x.shape, x.dtype, {**enc.params, "extra": 1})
    for key in enc.params:
        params = {k: v for k, v in enc.params.items() if k != key}
        with pytest.raises(UnknownCodec):
            codecs.get(name).decode(enc.payload, x.shape, x.dtype, params)


@pytest.mark.parametrize("name", SEEDED)
@pytest.mark.parametrize("bad", [True, 1.5, "3", None, -1, 2**64])
def test_params_of_the_wrong_type_or_range_are_malformed(name: str, bad: object) -> None:
    x, enc = _valid(name)
    for key in enc.params:
        with pytest.raises(MalformedPacket):
            codecs.get(name).decode(enc.payload, x.shape, x.dtype, {**enc.params, key: bad})


@pytest.mark.parametrize("name", ["int8", "int4", "topk_int8"])
def test_odd_or_huge_chunk_lengths_are_malformed(name: str) -> None:
    x, enc = _valid(name)
    for chunk in (3, 1, 0, quant.MAX_CHUNK + 2):
        with pytest.raises(MalformedPacket):
            codecs.get(name).decode(enc.payload, x.shape, x.dtype, {**enc.params, "c": chunk})


@pytest.mark.parametrize("name", ["topk", "topk_int8"])
def test_a_k_larger_than_the_tensor_is_refused_before_allocation(name: str) -> None:
    x, enc = _valid(name)
    with pytest.raises(MalformedPacket):
        codecs.get(name).decode(enc.payload, x.shape, x.dtype, {**enc.params, "k": x.size + 1})
    with pytest.raises(MalformedPacket):
        codecs.get("randk").decode(b"\0" * 4 * (x.size + 1), x.shape, x.dtype, {"k": x.size + 1, "seed": 1})


def test_an_index_beyond_the_tensor_is_malformed() -> None:
    blob, width = indices.encode(np.array([3, 10, 5000], np.int64))
    with pytest.raises(MalformedPacket):
        indices.decode(blob, 3, width, 5000)


def test_an_index_block_declaring_another_size_is_refused_before_decompressing() -> None:
    blob, width = indices.encode(np.arange(0, 1000, 3, dtype=np.int64))
    with pytest.raises(SizeMismatch):
        indices.decode(blob, 1000, width, 10_000)  # a "bomb": claims more than it carries
    with pytest.raises(MalformedPacket):
        indices.decode(b"\x00" * len(blob), 334, width, 10_000)
    with pytest.raises(MalformedPacket):
        indices.decode(blob, 334, 3, 10_000)


@pytest.mark.parametrize("name", ["topk", "topk_int8"])
def test_corrupted_index_blocks_are_typed_errors(name: str) -> None:
    x, enc = _valid(name)
    head = len(enc.payload) - enc.params["il"]
    for pos in range(head, len(enc.payload), max(1, enc.params["il"] // 25)):
        corrupt = bytearray(enc.payload)
        corrupt[pos] ^= 0xFF
        try:
            out = codecs.get(name).decode(bytes(corrupt), x.shape, x.dtype, enc.params)
        except WireError:
            continue
        assert out.shape == x.shape  # a flipped gap byte can still be a valid index set


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(LOSSY),
       shape=st.lists(st.integers(0, 40), max_size=3).map(tuple),
       payload=st.binary(max_size=600),
       params=st.dictionaries(st.sampled_from(["k", "c", "seed", "iw", "il", "x"]),
                              st.one_of(st.integers(-5, 2**64), st.floats(), st.booleans(), st.none(),
                                        st.text(max_size=3)), max_size=6))
def test_arbitrary_bytes_and_params_decode_or_raise_a_wire_error(name: str, shape: tuple[int, ...],
                                                                  payload: bytes, params: dict) -> None:
    try:
        out = codecs.get(name).decode(payload, shape, np.dtype(np.float32), params)
    except WireError:
        return
    assert out.shape == shape


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(LOSSY), data=st.data())
def test_mutated_valid_payloads_decode_or_raise_a_wire_error(name: str, data: st.DataObject) -> None:
    x, enc = _valid(name, 700)
    payload = bytearray(enc.payload)
    for _ in range(data.draw(st.integers(1, 8))):
        payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    for candidate in (bytes(payload), bytes(payload[:cut])):
        try:
            out = codecs.get(name).decode(candidate, x.shape, x.dtype, enc.params)
        except WireError:
            continue
        assert out.shape == x.shape


# --- through the wire ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", LOSSY)
def test_a_packet_encoded_with_a_policy_decodes_through_the_wire(name: str) -> None:
    model = {"w": gaussian(20_000).reshape(100, 200), "b": gaussian(100),
             "n": np.array(3, np.int64)}
    specs = specs_of(model)
    header = PacketHeader(sender_id="a", sender_addr="a:1", fingerprint=fingerprint(specs),
                          model_version=1, age=1, samples=1, codec=name)
    packet = decode_packet(encode_packet(header, model, codecs.policy(name)), expected=specs)
    np.testing.assert_array_equal(packet.tensors["b"], model["b"])  # small: dense fp32
    assert packet.tensors["n"] == 3
    assert packet.tensors["w"].shape == (100, 200)


# --- sparse deltas added in place (issue 12) ------------------------------------------------------

@pytest.mark.parametrize("name", ["topk", "topk_int8", "randk"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_a_sparse_delta_added_in_place_has_the_bits_of_the_dense_sum(name: str, dtype: type) -> None:
    rng = np.random.default_rng(3)
    delta = rng.standard_normal((70, 1000)).astype(dtype)
    codec = codecs.make(name, ratio=0.02, seed=5)
    enc = codec.encode(delta)
    registered = codecs.get(name)
    dense = registered.decode(enc.payload, delta.shape, np.dtype(dtype), enc.params)
    entries = registered.decode_sparse(enc.payload, delta.shape, np.dtype(dtype), enc.params)
    assert entries.values.size < delta.size // 10 and entries.dense().tobytes() == dense.tobytes()
    replica = rng.standard_normal(delta.shape).astype(dtype)
    replica.reshape(-1)[::97] = -0.0  # a dense add turns these into +0.0 where nothing was sent
    replica.reshape(-1)[entries.indices[:5]] = -0.0
    expected = replica + dense
    entries.add_into(replica)
    assert replica.tobytes() == expected.tobytes()
    strided = np.asfortranarray(expected - dense)  # not C-contiguous: through the dense sum
    entries.add_into(strided)
    assert np.ascontiguousarray(strided).tobytes() == expected.tobytes()


def test_a_sparse_tensor_with_a_repeated_index_adds_like_its_dense_form() -> None:
    from protocol.codecs.base import SparseTensor

    entries = SparseTensor((6,), np.dtype(np.float32), np.array([1, 4, 4]), np.array([1.0, 2.0, 3.0], np.float32))
    target = np.arange(6, dtype=np.float32)
    expected = target + entries.dense()
    entries.add_into(target)
    assert target.tobytes() == expected.tobytes() and target[4] == 7.0
