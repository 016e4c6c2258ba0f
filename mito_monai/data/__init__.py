"""Data layer: volume readers/writers, dataset layouts, slice datasets, downloads and demo data.

Volumes are numpy arrays of shape (Z, Y, X). Every bad-input problem is raised as
:class:`DataError` (a ``ValueError``) with a message naming the file or folder.
"""

from mito_monai.data.demo import DEMO_LAYOUTS, default_demo_root, ensure_demo_data, make_demo_data
from mito_monai.data.download import DATASETS, download_dataset, download_file, extract_archive, verify_file
from mito_monai.data.errors import DataError
from mito_monai.data.io import (
    VolumeWriter,
    list_image_files,
    natural_sort_key,
    open_volume_writer,
    probe_volume,
    read_image_files,
    read_volume,
    write_volume,
)
from mito_monai.data.layouts import (
    LAYOUTS,
    SplitFiles,
    available_layouts,
    dataset_info,
    list_splits,
    load_split,
    open_split,
    split_files,
)
from mito_monai.data.volume import SlabBoxWriter, Volume, box_to_str, open_volume
from mito_monai.data.zarr_store import ZarrBoxWriter, create_ome_zarr_image, is_zarr_path, open_zarr_volume
from mito_monai.data.class_balance import foreground_prior, label_foreground_fraction
from mito_monai.data.partitions import (
    PARTITIONS,
    SAMPLINGS,
    Partition,
    labelled_count,
    parse_partition,
    partition_slices,
    partition_split,
)

def __getattr__(name: str):
    # EMSliceDataset imports MONAI (and torch), which takes seconds: load it on first use so that
    # readers, layouts and `dataset-info` stay fast.
    if name == "EMSliceDataset":
        from mito_monai.data.slices import EMSliceDataset

        return EMSliceDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DataError",
    "read_volume",
    "read_image_files",
    "write_volume",
    "probe_volume",
    "VolumeWriter",
    "open_volume_writer",
    "natural_sort_key",
    "Volume",
    "open_volume",
    "box_to_str",
    "SlabBoxWriter",
    "ZarrBoxWriter",
    "create_ome_zarr_image",
    "is_zarr_path",
    "open_zarr_volume",
    "list_image_files",
    "LAYOUTS",
    "SplitFiles",
    "available_layouts",
    "list_splits",
    "split_files",
    "load_split",
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
    "foreground_prior",
    "label_foreground_fraction",
]
