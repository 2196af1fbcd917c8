from __future__ import annotations

import numpy as np
import pytest
import torch

from peer.config import PeerConfig
from peer.data.datasets import FASHION_MNIST_DIR
from peer.models import build_model
from peer.node import build_trainer
from peer.plugins import PluginError
from peer.trainer import resolve_device


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_zoo_models_train_on_digits(name: str) -> None:
    t = build_trainer(PeerConfig(model=name, seed=1, steps_per_second=0))
    before = t.evaluate()
    t.train_steps(150)
    assert t.evaluate() > max(0.8, before + 0.3)
    assert t.stats().steps == 150 and t.stats().version == 150


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_cnn_on_28x28_is_the_pooled_cnn_and_learns_fashion_mnist(tmp_path) -> None:  # noqa: ANN001
    from peer.models import PooledCNN, SmallCNN

    assert isinstance(build_model("cnn", (1, 28, 28), 10), PooledCNN)
    assert isinstance(build_model("cnn", (1, 8, 8), 10), SmallCNN)  # digits keep the measured model
    pooled = sum(p.numel() for p in build_model("cnn", (1, 28, 28), 10).parameters())
    small = sum(p.numel() for p in build_model("cnn-small", (1, 28, 28), 10).parameters())
    assert pooled < small / 2
    t = build_trainer(PeerConfig(dataset="fashion-mnist", dataset_arg=["limit=3000"], data_cache=str(tmp_path),
                                 model="cnn", seed=1, steps_per_second=0, eval_every=10**9))
    t.train_steps(200)
    assert t.evaluate() > 0.7  # 200 steps of batch 32 on 3000 real images; random guessing is 0.10


def test_training_is_reproducible_from_the_seed() -> None:
    a = build_trainer(PeerConfig(seed=5, steps_per_second=0))
    b = build_trainer(PeerConfig(seed=5, steps_per_second=0))
    c = build_trainer(PeerConfig(seed=6, steps_per_second=0))
    for t in (a, b, c):
        t.train_steps(20)
    assert a.digest() == b.digest() != c.digest()


def test_merge_with_replaces_the_model_and_bumps_the_version() -> None:
    t = build_trainer(PeerConfig(steps_per_second=0))
    zeros = {k: np.zeros_like(v) for k, v in t.state().items()}
    t.merge_with(lambda current: zeros)
    assert all(not v.any() for v in t.state().values())
    assert t.stats().version == 1


def test_user_model_by_import_path_and_errors() -> None:
    m = build_model("tests.peer.user_plugins:linear_model", (4,), 3)
    assert isinstance(m, torch.nn.Module)
    t = build_trainer(PeerConfig(dataset="tests.peer.user_plugins:tiny_dataset",
                                 model="tests.peer.user_plugins:linear_model", steps_per_second=0, lr=0.1))
    t.train_steps(200)
    assert t.evaluate() > 0.8
    with pytest.raises(PluginError, match="cnn needs"):
        build_model("cnn", (4,), 3)
    with pytest.raises(PluginError, match="not torch.nn.Module"):
        build_model("tests.peer.user_plugins:wrong_type", (4,), 3)


def test_device_choice() -> None:
    assert resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")
