"""peer.runtime.sgd.MomentumSGD against torch.optim.SGD: the same bits, the same state format,
and no torch._dynamo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from peer.runtime.checkpoint import decode, encode
from peer.runtime.config import PeerConfig
from peer.runtime.sgd import MomentumSGD
from peer.runtime.trainer import Trainer
from tests.trainers import build_trainer


def _with_torch_sgd(t: Trainer, lr: float, momentum: float) -> Trainer:
    """``t`` with the optimiser the trainer had before peer.runtime.sgd (how old checkpoints were written)."""
    t.optimizer = torch.optim.SGD(t.model.parameters(), lr=lr, momentum=momentum)
    return t


def _same(a: Trainer, b: Trainer) -> None:
    assert a.digest() == b.digest()
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        sa, sb = a.optimizer.state.get(pa, {}), b.optimizer.state.get(pb, {})
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize(("model", "momentum"), [("cnn", 0.9), ("mlp", 0.9), ("mlp", 0.0)])
def test_trajectories_are_bit_identical_to_torch_sgd(model: str, momentum: float) -> None:
    """Steps, a changed rate, a merge that resets momentum: every weight and buffer equal, bit for bit."""
    config = PeerConfig(model=model, seed=3, steps_per_second=0, momentum=momentum, lr=0.05,
                        merge_momentum="reset", eval_every=10**9)
    ours, theirs = build_trainer(config), _with_torch_sgd(build_trainer(config), 0.05, momentum)
    assert isinstance(ours.optimizer, MomentumSGD)
    for phase in range(3):
        for _ in range(8):
            assert ours.step() == theirs.step()
            _same(ours, theirs)
        for t in (ours, theirs):
            t.set_base_lr(0.05 / (phase + 2))
            t.merge_in_place(lambda current: [v.__imul__(0.5) for v in current.values()])
        _same(ours, theirs)
    assert ours.digest() != build_trainer(config).digest()  # it did train


def test_state_dicts_have_torchs_layout_and_load_both_ways() -> None:
    """A checkpoint written with torch.optim.SGD (every checkpoint before this module) restores
    into today's trainer and continues exactly as torch would; today's loads into torch's SGD."""
    config = PeerConfig(model="cnn", seed=4, steps_per_second=0, lr=0.05, momentum=0.9, eval_every=10**9)
    old, new = _with_torch_sgd(build_trainer(config), 0.05, 0.9), build_trainer(config)
    old.train_steps(6)
    new.train_steps(6)
    a, b = old.optimizer.state_dict(), new.optimizer.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys() and len(a["state"]) == len(list(new.model.parameters()))
    assert all(torch.equal(a["state"][i]["momentum_buffer"], b["state"][i]["momentum_buffer"]) for i in a["state"])

    old_checkpoint = decode(encode({"trainer": old.checkpoint_state()}))["trainer"]
    new_checkpoint = decode(encode({"trainer": new.checkpoint_state()}))["trainer"]
    restored_new = build_trainer(config)
    restored_new.restore(old_checkpoint)  # torch's format into MomentumSGD
    restored_old = _with_torch_sgd(build_trainer(config), 0.05, 0.9)
    restored_old.restore(new_checkpoint)  # MomentumSGD's into torch's
    _same(restored_new, old)
    _same(restored_old, old)
    for t in (old, restored_new, restored_old):
        t.train_steps(5)
    _same(restored_new, old)
    _same(restored_old, old)


# A fresh interpreter: torch caches its dynamo wrappers on first use, so a process that already
# ran torch.optim.SGD (any pytest worker) would no longer show the import. A tiny trainer: the
# import of torch is most of this test's cost (~1.5 CPU-s).
_FRESH_TRAINER = """
import sys
import numpy as np
import torch
from peer.runtime.checkpoint import decode, encode
from peer.runtime.trainer import Trainer
from tests.peer.user_plugins import linear_model, tiny_dataset
data = tiny_dataset()
t = Trainer(linear_model((4,), 3), data, np.arange(60), device=torch.device("cpu"), seed=0, batch_size=8, lr=0.1,
            momentum=0.9)
t.train_steps(3)
t.restore(decode(encode(t.checkpoint_state())))
t.train_steps(1)
t.evaluate()
t.optimizer.zero_grad(set_to_none=False)
print("torch._dynamo" in sys.modules, t.stats().steps)
"""


def test_a_trainer_never_imports_torch_dynamo() -> None:
    """Build, step, checkpoint, restore, evaluate: no torch._dynamo (torch.optim.SGD imports it:
    1.2 CPU-s of every peer's start)."""
    out = subprocess.run([sys.executable, "-c", _FRESH_TRAINER], capture_output=True, text=True, timeout=120,
                         check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert out.stdout.split() == ["False", "4"], out.stdout + out.stderr


def test_refuses_what_it_does_not_implement() -> None:
    params = list(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(ValueError, match="learning rate"):
        MomentumSGD(params, lr=-1.0)
    opt = MomentumSGD(params, lr=0.1, momentum=0.9)
    for option in ({"nesterov": True, "momentum": 0.9}, {"weight_decay": 0.01}, {"dampening": 0.1}, {"maximize": True}):
        saved = torch.optim.SGD(params, lr=0.1, **{"momentum": 0.9, **option}).state_dict()
        with pytest.raises(ValueError, match=next(iter(k for k in option if k != "momentum"))):
            opt.load_state_dict(saved)


@pytest.mark.parametrize("foreach", [False, True])
def test_both_of_torchs_paths_match_including_the_multi_tensor_one_cuda_takes(foreach: bool) -> None:
    """torch takes its multi-tensor (foreach) path by default on CUDA; forced here on the CPU, both
    implementations' foreach paths run and must agree bit for bit, as the per-tensor ones do."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    twin = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    twin.load_state_dict(model.state_dict())
    ours = MomentumSGD(model.parameters(), lr=0.05, momentum=0.9)
    ours.param_groups[0]["foreach"] = foreach
    theirs = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9, foreach=foreach)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    for step in range(6):
        for m, opt in ((model, ours), (twin, theirs)):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(m(x[step:step + 8]), y[step:step + 8]).backward()
            opt.step()
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters(), strict=True))
    assert all(torch.equal(ours.state[a]["momentum_buffer"], theirs.state[b]["momentum_buffer"])
               for a, b in zip(model.parameters(), twin.parameters(), strict=True))
