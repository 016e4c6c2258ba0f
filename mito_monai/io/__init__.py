"""Reading and writing (Z, Y, X) volumes: one module per format, one lazy :class:`Volume` API, one writer API.

Formats: multi-page TIFF (:mod:`~mito_monai.io.tiff`), folders of 2D images (:mod:`~mito_monai.io.image_folder`),
HDF5 (:mod:`~mito_monai.io.hdf5`), NIfTI and the ITK formats (:mod:`~mito_monai.io.nifti_itk`), zarr and OME-Zarr
(:mod:`~mito_monai.io.zarr_store`). :func:`read_volume` reads a whole volume, :func:`open_volume` opens one lazily,
:func:`write_volume` / :class:`VolumeWriter` / the box writers write one. Every bad-input problem is raised as
:class:`DataError` (a ``ValueError``) with a message naming the file or folder.
"""

from mito_monai.io.errors import DataError
from mito_monai.io.hdf5 import list_h5_datasets, split_h5_path
from mito_monai.io.image_folder import list_image_files, read_image_files
from mito_monai.io.paths import IMAGE_SLICE_EXTENSIONS, VOLUME_EXTENSIONS, natural_sort_key
from mito_monai.io.read import read_volume
from mito_monai.io.volume import Volume, box_to_str, open_volume
from mito_monai.io.writer import SlabBoxWriter, VolumeWriter, open_volume_writer, write_volume
from mito_monai.io.zarr_store import ZarrBoxWriter, create_ome_zarr_image, is_zarr_path, open_zarr_volume

__all__ = [
    "DataError",
    "IMAGE_SLICE_EXTENSIONS",
    "VOLUME_EXTENSIONS",
    "natural_sort_key",
    "list_image_files",
    "list_h5_datasets",
    "split_h5_path",
    "read_image_files",
    "read_volume",
    "Volume",
    "open_volume",
    "box_to_str",
    "write_volume",
    "VolumeWriter",
    "open_volume_writer",
    "SlabBoxWriter",
    "ZarrBoxWriter",
    "create_ome_zarr_image",
    "is_zarr_path",
    "open_zarr_volume",
]
