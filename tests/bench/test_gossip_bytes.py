"""bench.gossip_bytes: a round's keyframes and bytes, and what fp16 keyframes and int8 small tensors save."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import torch

from bench.gossip_bytes import main


@pytest.fixture(autouse=True)
def threads_restored() -> Iterator[None]:
    """main() sets one torch thread, as a benchmark run should; the worker gets its own back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def rows(out: str) -> list[tuple[int, int, int, float]]:
    """(keyframes, messages, KB per peer, bytes per parameter) of every round printed."""
    found = re.findall(r"^\| \d+ \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) KB \| ([\d.]+) \|$", out, re.M)
    return [(int(k.replace(",", "")), int(m.replace(",", "")), int(b.replace(",", "")), float(p)) for k, m, b, p in found]


def test_keyframes_come_first_and_fp16_with_int8_small_tensors_sends_less(capsys) -> None:  # noqa: ANN001
    args = ["--peers", "6", "--exchanges", "2", "--rounds", "3", "--codec", "int8"]
    assert main(args) == 0
    fp32 = rows(capsys.readouterr().out)
    assert main([*args, "--keyframe-codec", "fp16", "--small-codec", "int8"]) == 0
    fp16 = rows(capsys.readouterr().out)
    assert len(fp32) == len(fp16) == 3
    # The same exchanges either way (the codecs change bytes, not who talks to whom).
    assert [r[:2] for r in fp32] == [r[:2] for r in fp16]
    assert all(m == 6 * 2 * 2 for _, m, _, _ in fp32)  # 6 peers x 2 exchanges x push and pull
    assert sum(k for k, _, _, _ in fp32) <= 6 * 5  # one keyframe per directed link at most
    assert fp32[0][0] > 0 and fp32[0][3] > fp32[-1][3]  # keyframes make the first round the dearest
    assert all(b16 < b32 for (_, _, b32, _), (_, _, b16, _) in zip(fp32, fp16))
