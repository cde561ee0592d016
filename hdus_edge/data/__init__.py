"""Data: loaders (I/O), the Dataset type, partitions, reference sets and fleet splits (pure numpy).

No torch here: the inference path and the tools import this package on devices without it.
Never imports anything of hdus_edge but ``errors`` and ``files``.
"""

from hdus_edge.data.dataset import (
    UNLABELED,
    Dataset,
    concatenate,
    dataset_sha256,
    sample_hashes,
)
from hdus_edge.data.fleet_split import (
    REFERENCE_KINDS,
    ClientData,
    FleetData,
    split_fleet,
)
from hdus_edge.data.idx import decode_idx, encode_idx
from hdus_edge.data.loaders import (
    load_data_folder,
    load_dataset,
    load_digits,
    load_idx,
    load_idx_folder,
    load_npz,
    save_npz,
)
from hdus_edge.data.mnist_bundle import MNIST_DIR_ENV, MNIST_SPLITS, default_mnist_dir, load_mnist
from hdus_edge.data.partition import SCHEMES, apportion, partition, stratified_sample, stratified_split
from hdus_edge.data.reference import NOISE_KINDS, check_reference_disjoint, noise_reference

__all__ = [
    "MNIST_DIR_ENV",
    "MNIST_SPLITS",
    "NOISE_KINDS",
    "REFERENCE_KINDS",
    "SCHEMES",
    "UNLABELED",
    "ClientData",
    "Dataset",
    "FleetData",
    "apportion",
    "check_reference_disjoint",
    "concatenate",
    "dataset_sha256",
    "decode_idx",
    "default_mnist_dir",
    "encode_idx",
    "load_data_folder",
    "load_dataset",
    "load_digits",
    "load_idx",
    "load_idx_folder",
    "load_mnist",
    "load_npz",
    "noise_reference",
    "partition",
    "sample_hashes",
    "save_npz",
    "split_fleet",
    "stratified_sample",
    "stratified_split",
]
