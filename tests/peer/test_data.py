from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from peer.runtime.config import PeerConfig
from peer.data import DatasetError, dataset_from_config, dirichlet_partition, iid_partition, load_dataset
from peer.data.datasets import FASHION_MNIST_DIR
from peer.data.files import IDX_FILES
from peer.runtime.plugins import PluginError

REPO = Path(__file__).resolve().parents[2]
needs_fashion = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                                   reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")


def test_digits_is_real_with_a_fixed_stratified_test_split() -> None:
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=0)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.train_x) + len(a.test_x) == 1797
    np.testing.assert_array_equal(a.test_y, b.test_y)
    assert np.bincount(a.test_y).min() >= 30  # every class in the test split
    assert 0.0 <= a.train_x.min() and a.train_x.max() <= 1.0


@pytest.mark.parametrize("shards", [1, 3, 16])
def test_iid_shards_are_disjoint_cover_and_balanced(shards: int) -> None:
    parts = iid_partition(1437, shards, seed=3)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(1437))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_dirichlet_small_alpha_skews_labels_and_is_reproducible() -> None:
    labels = load_dataset("digits").train_y
    skewed = dirichlet_partition(labels, 3, alpha=0.3, seed=0)
    again = dirichlet_partition(labels, 3, alpha=0.3, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(skewed, again))
    assert sorted(np.concatenate(skewed).tolist()) == list(range(len(labels)))
    mild = dirichlet_partition(labels, 3, alpha=100.0, seed=0)

    def dominance(parts: list[np.ndarray]) -> float:  # mean share of each shard's most common label
        return float(np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]))

    assert dominance(skewed) > 2 * dominance(mild)
    assert min(len(p) for p in skewed) >= 10


def test_user_dataset_by_import_path_and_clear_errors() -> None:
    ds = load_dataset("tests.peer.user_plugins:tiny_dataset")
    assert ds.name == "tiny" and ds.num_classes == 3
    with pytest.raises(PluginError, match="expected one of digits, fashion-mnist, idx:DIR, npz:FILE"):
        load_dataset("mnist")
    with pytest.raises(PluginError, match="cannot import"):
        load_dataset("no_such_module_xyz:make")
    with pytest.raises(PluginError, match="no callable"):
        load_dataset("tests.peer.user_plugins:nothing_here")
    with pytest.raises(PluginError, match="not peer.data.Dataset"):
        load_dataset("tests.peer.user_plugins:wrong_type")


# --- real files: Fashion-MNIST as Debian installs it, and IDX/npz made from it -----------------

def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (gzipped when the name ends in .gz) holding a uint8 array."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw, compresslevel=1) if path.suffix == ".gz" else raw)


def _small_idx_dir(directory: Path, train: int = 600, test: int = 200, gz: bool = True) -> Path:
    """The first ``train``/``test`` real Fashion-MNIST samples as an IDX directory."""
    full = load_dataset("fashion-mnist", cache_dir=str(directory.parent / "fm-cache"))
    directory.mkdir(parents=True, exist_ok=True)
    parts = {"train_x": (full.train_x[:train, 0] * 255).round(), "train_y": full.train_y[:train],
             "test_x": (full.test_x[:test, 0] * 255).round(), "test_y": full.test_y[:test]}
    for part, stem in IDX_FILES.items():
        _write_idx(directory / (stem + (".gz" if gz else "")), parts[part])
    return directory


@needs_fashion
def test_fashion_mnist_is_the_real_set_decoded_once_into_a_shared_memory_map(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = load_dataset("fashion-mnist", cache_dir=str(cache))
    assert first.name == "fashion-mnist" and first.num_classes == 10 and first.input_shape == (1, 28, 28)
    assert (len(first.train_y), len(first.test_y)) == (60000, 10000)
    assert np.bincount(first.train_y).tolist() == [6000] * 10 and np.bincount(first.test_y).tolist() == [1000] * 10
    assert first.train_x.dtype == np.float32 and 0.0 <= float(first.test_x.min()) < float(first.test_x.max()) <= 1.0
    entries = sorted(p.name for p in cache.glob("*.npy"))
    assert len(entries) == 4 and not list(cache.glob("*.tmp"))
    again = load_dataset("fashion-mnist", cache_dir=str(cache))
    assert isinstance(again.train_x, np.memmap) and isinstance(again.test_y, np.memmap)  # mapped, not decoded
    assert not again.train_x.flags.writeable
    np.testing.assert_array_equal(first.test_x[:50], again.test_x[:50])
    assert sorted(p.name for p in cache.glob("*.npy")) == entries


@needs_fashion
def test_eight_peers_starting_at_once_decode_once_and_agree(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    probe = ("import logging, sys, hashlib; logging.basicConfig(level=logging.INFO, stream=sys.stdout); "
             "from peer.data import load_dataset; d = load_dataset('fashion-mnist', cache_dir=sys.argv[1]); "
             "print('digest', hashlib.sha256(d.train_x[::97].tobytes() + d.test_y.tobytes()).hexdigest())")
    procs = [subprocess.Popen([sys.executable, "-c", probe, str(cache)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(8)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    digests = {line for out in outputs for line in out.splitlines() if line.startswith("digest")}
    assert len(digests) == 1
    decoded = sum(out.count("into the data cache") for out in outputs)
    assert decoded == 4  # each of the four files decoded by exactly one of the eight processes
    assert len(list(cache.glob("*.npy"))) == 4 and not list(cache.glob("*.tmp"))


@needs_fashion
def test_idx_directory_gzipped_or_not_and_cache_follows_the_source_file(tmp_path: Path) -> None:
    directory = _small_idx_dir(tmp_path / "idx")
    cache = str(tmp_path / "cache")
    ds = load_dataset(f"idx:{directory}", cache_dir=cache)
    assert (len(ds.train_y), len(ds.test_y), ds.input_shape, ds.num_classes) == (600, 200, (1, 28, 28), 10)
    plain = _small_idx_dir(tmp_path / "plain", gz=False)
    np.testing.assert_array_equal(load_dataset(f"idx:{plain}", cache_dir=cache).train_x, ds.train_x)
    # Replace a source file: the cache must not serve the old decode.
    labels = directory / (IDX_FILES["test_y"] + ".gz")
    _write_idx(labels, np.full(200, 3, dtype=np.uint8))
    os.utime(labels, ns=(1, 1))  # a different identity even if the clock is coarse
    assert set(load_dataset(f"idx:{directory}", cache_dir=cache).test_y.tolist()) == {3}


@needs_fashion
def test_npz_archives_keras_names_channel_last_and_limit(tmp_path: Path) -> None:
    full = load_dataset("fashion-mnist", cache_dir=str(tmp_path / "cache"))
    pixels = (full.train_x[:300, 0] * 255).round().astype(np.uint8)
    path = tmp_path / "fm.npz"
    np.savez_compressed(path, x_train=pixels, y_train=full.train_y[:300], x_test=pixels[:50],
                        y_test=full.train_y[:50])
    ds = load_dataset(f"npz:{path}", cache_dir=str(tmp_path / "cache"))
    assert ds.input_shape == (1, 28, 28) and len(ds.train_y) == 300
    np.testing.assert_allclose(ds.train_x[:10], full.train_x[:10], atol=1e-6)
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, train_x=np.zeros((20, 8, 8, 3), np.uint8), train_y=np.arange(20) % 2,
             test_x=np.zeros((4, 8, 8, 3), np.uint8), test_y=np.arange(4) % 2)
    assert load_dataset(f"npz:{rgb}", cache_dir=str(tmp_path / "cache")).input_shape == (3, 8, 8)
    a = load_dataset(f"npz:{path}", seed=4, args={"limit": "120"}, cache_dir=str(tmp_path / "cache"))
    b = load_dataset(f"npz:{path}", seed=4, args={"limit": "120"}, cache_dir=str(tmp_path / "cache"))
    assert len(a.train_y) == 120 and len(a.test_y) == 50
    np.testing.assert_array_equal(a.train_y, b.train_y)


@needs_fashion
def test_missing_and_damaged_files_give_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = str(tmp_path / "cache")

    def error(spec: str, **kw: object) -> str:
        with pytest.raises(DatasetError) as info:
            load_dataset(spec, cache_dir=cache, **kw)  # type: ignore[arg-type]
        message = str(info.value)
        assert "\n" not in message
        return message

    assert "not found" in error("fashion-mnist", path=str(tmp_path / "nowhere"))
    monkeypatch.setattr("peer.data.datasets.FASHION_MNIST_DIR", tmp_path / "not-installed")
    assert "install Debian's dataset-fashion-mnist package, or pass --data-path DIR" in error("fashion-mnist")
    monkeypatch.undo()
    directory = _small_idx_dir(tmp_path / "idx")
    images = directory / (IDX_FILES["train_x"] + ".gz")
    good = images.read_bytes()
    images.write_bytes(good[: len(good) // 2])  # truncated download
    assert "damaged" in error(f"idx:{directory}")
    images.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + (600).to_bytes(4, "big") + (28).to_bytes(4, "big")
                                     + (28).to_bytes(4, "big") + b"\x00" * 100))
    assert "declares shape (600, 28, 28)" in error(f"idx:{directory}")
    images.write_bytes(gzip.compress(b"PK\x03\x04 not idx"))
    assert "not an IDX file" in error(f"idx:{directory}")
    images.unlink()
    assert "train-images-idx3-ubyte[.gz] not found" in error(f"idx:{directory}")
    shutil.rmtree(directory)
    assert "is not a directory" in error(f"idx:{directory}")
    assert "not found" in error(f"npz:{tmp_path / 'none.npz'}")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert "not a readable .npz" in error(f"npz:{tmp_path / 'bad.npz'}")
    np.savez(tmp_path / "keys.npz", images=np.zeros((3, 2)))
    assert "needs arrays x_train, y_train, x_test, y_test" in error(f"npz:{tmp_path / 'keys.npz'}")
    assert "takes no option colour" in error("digits", args={"colour": "red"})
    assert "limit must be in 1..1437" in error("digits", args={"limit": "0"})
    assert "name the directory after the colon" in error("idx:")


def test_plugin_factories_receive_the_users_dataset_args(tmp_path: Path) -> None:
    from peer.tools.cli import build_parser
    from peer.runtime.config import load

    args = build_parser().parse_args(["run", "--dataset", "tests.peer.user_plugins:sized_dataset",
                                      "--dataset-arg", "n=30", "--data-path", str(tmp_path), "--seeds",
                                      "127.0.0.1:1,127.0.0.1:2", "--seeds", "127.0.0.1:3"])
    config = load(args, environ={})
    assert config.dataset_arg == ["n=30"] and len(config.seeds) == 3
    ds = dataset_from_config(config)
    assert len(ds.train_y) == 30 and ds.name == f"sized:{tmp_path}"
    with pytest.raises(DatasetError, match="cannot take .*colour"):
        dataset_from_config(PeerConfig(dataset="tests.peer.user_plugins:sized_dataset", dataset_arg=["colour=red"]))
    with pytest.raises(DatasetError, match="expected KEY=VALUE, got 'n30'"):
        dataset_from_config(PeerConfig(dataset="tests.peer.user_plugins:sized_dataset", dataset_arg=["n30"]))
    repeated = build_parser().parse_args(["run", "--dataset-arg", "a=1", "--dataset-arg", "b=2"])
    assert load(repeated, environ={}).dataset_arg == ["a=1", "b=2"]
