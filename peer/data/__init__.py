"""Data sets and how the training data is split across peers."""

from peer.data.dataset import Dataset, DatasetError
from peer.data.datasets import dataset_from_config, load_dataset, parse_dataset_args
from peer.data.partition import dirichlet_partition, iid_partition, partition

__all__ = ["Dataset", "DatasetError", "dataset_from_config", "dirichlet_partition", "iid_partition",
           "load_dataset", "parse_dataset_args", "partition"]
