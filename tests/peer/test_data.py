from __future__ import annotations

import numpy as np
import pytest

from peer.data import dirichlet_partition, iid_partition, load_dataset
from peer.plugins import PluginError


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
    with pytest.raises(PluginError, match="expected 'module:factory'"):
        load_dataset("mnist")
    with pytest.raises(PluginError, match="cannot import"):
        load_dataset("no_such_module_xyz:make")
    with pytest.raises(PluginError, match="no callable"):
        load_dataset("tests.peer.user_plugins:nothing_here")
    with pytest.raises(PluginError, match="not peer.data.Dataset"):
        load_dataset("tests.peer.user_plugins:wrong_type")
