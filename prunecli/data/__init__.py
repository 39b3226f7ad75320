"""Datasets: registry, in-memory tensor splits, folder datasets, loaders."""

from prunecli.data._registry import (
    Augment,
    DataBundle,
    DatasetSpec,
    TensorSplit,
    dataset_description,
    dataset_shape,
    get_dataset,
    list_datasets,
    register_dataset,
)

__all__ = [
    "Augment",
    "DataBundle",
    "DatasetSpec",
    "TensorSplit",
    "dataset_description",
    "dataset_shape",
    "get_dataset",
    "list_datasets",
    "register_dataset",
]
