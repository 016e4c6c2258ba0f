"""Datasets: one module per dataset (``vnc3``, ``lucchi``, ``lucchi_pp``, ``mitoem``, ``folder``, ``demo``) with its
layout and download source, the registry by name, the splits, the slice datasets and the labelled partitions.

Volumes are read through :mod:`mito_monai.io`; every bad-input problem is a :class:`~mito_monai.io.DataError`.
"""

from mito_monai.datasets.demo import DEMO_LAYOUTS, default_demo_root, ensure_demo_data, make_demo_data
from mito_monai.datasets.download import DatasetSource, RemoteFile, download_file, extract_archive, verify_file
from mito_monai.datasets.layout import DatasetLayout, SplitFiles
from mito_monai.datasets.class_balance import foreground_prior, label_foreground_fraction
from mito_monai.datasets.evaluation import (
    evaluation_dataset,
    evaluation_keys,
    evaluation_split_name,
    is_label_free,
    labelled_slice_dataset,
)
from mito_monai.datasets.partitions import (
    PARTITIONS,
    SAMPLINGS,
    Partition,
    labelled_count,
    parse_partition,
    partition_slices,
    partition_split,
)
from mito_monai.datasets.registry import (
    DATASETS,
    LAYOUTS,
    available_layouts,
    download_dataset,
    get_layout,
    list_splits,
    split_files,
)
from mito_monai.datasets.pixel_size import layout_pixel_size, pixel_size_option, rescale_factor, resolution_scale
from mito_monai.datasets.splits import dataset_info, load_split, open_split, parse_split_spec


def __getattr__(name: str):
    # EMSliceDataset imports MONAI (and torch), which takes seconds: load it on first use so that
    # readers, layouts and `dataset-info` stay fast.
    if name == "EMSliceDataset":
        from mito_monai.datasets.slices import EMSliceDataset

        return EMSliceDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "evaluation_dataset",
    "evaluation_split_name",
    "evaluation_keys",
    "labelled_slice_dataset",
    "is_label_free",
    "foreground_prior",
    "layout_pixel_size",
    "pixel_size_option",
    "rescale_factor",
    "resolution_scale",
    "label_foreground_fraction",
    "DatasetLayout",
    "DatasetSource",
    "RemoteFile",
    "LAYOUTS",
    "SplitFiles",
    "available_layouts",
    "get_layout",
    "list_splits",
    "split_files",
    "load_split",
    "parse_split_spec",
    "open_split",
    "dataset_info",
    "EMSliceDataset",
    "DATASETS",
    "download_file",
    "download_dataset",
    "extract_archive",
    "verify_file",
    "DEMO_LAYOUTS",
    "make_demo_data",
    "ensure_demo_data",
    "default_demo_root",
    "PARTITIONS",
    "SAMPLINGS",
    "Partition",
    "labelled_count",
    "parse_partition",
    "partition_slices",
    "partition_split",
]
