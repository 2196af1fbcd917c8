"""Data sets and how the training data is split across peers."""

from peer.data.datasets import Dataset, load_dataset
from peer.data.partition import dirichlet_partition, iid_partition, partition

__all__ = ["Dataset", "dirichlet_partition", "iid_partition", "load_dataset", "partition"]
