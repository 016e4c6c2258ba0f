"""Reading and writing EM volumes as numpy arrays of shape (Z, Y, X).

Supported formats (by file suffix, case-insensitive):

- multi-page TIFF (``.tif``, ``.tiff``) through tifffile;
- a folder of 2D images (``.png``, ``.tif``, ``.tiff``, ``.jpg``, ``.jpeg``, ``.bmp``), one file per Z
  slice, ordered by the numbers in the file names (natural sort: ``2.png`` before ``10.png``);
- HDF5 (``.h5``, ``.hdf5``, ``.hdf``) through h5py; the dataset is named by ``key`` or with the
  ``"file.h5:key"`` syntax;
- NIfTI (``.nii``, ``.nii.gz``) through nibabel; nibabel's (X, Y, Z) order is transposed to (Z, Y, X);
- single-file formats read by ITK (``.mha``, ``.mhd``, ``.nrrd``, ``.nhdr``, ``.vtk``, ``.gipl``,
  ``.mrc``, ``.rec``);
- a single 2D image file (PNG/JPEG/BMP, or a one-page TIFF) becomes a (1, Y, X) volume;
- zarr v2/v3 arrays, groups and OME-Zarr images (``vol.zarr``, ``vol.zarr/raw``), see
  :mod:`mito_monai.io.zarr_store`; for lazy box-wise access use :func:`mito_monai.io.open_volume`.

Folders of slices: hidden files (names starting with ``.``, e.g. ``.DS_Store``), ``Thumbs.db`` and
``desktop.ini`` are ignored, and so are sub-folders; any other file that is not an image (for
example ``notes.txt``) is an error that names it, because silently skipping it could hide a
mistake such as a missing or misnamed slice.

Colour: RGB(A) images whose R, G and B channels are equal are read as grey (channel 0). Other colour
images are converted to luminance (ITU-R 601 weights) when read as images and refused when read as
labels. An RGBA label whose colour is uniform and whose alpha channel is not fully opaque everywhere
(a mask drawn as opacity on a transparent background) is read from its alpha channel. Labels
(``label=True``) are binarised as "non-zero" to uint8 {0, 1}, which covers 1-bit PNG masks, {0, 255}
masks and instance-ID volumes alike. JPEG labels are refused: lossy compression puts non-zero noise
around every edge, which "non-zero" would read as foreground.

Every problem with the input is raised as :class:`~mito_monai.io.DataError` with a one-line
message naming the file or folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mito_monai.io.arrays import colour_to_grey, finish_array, to_zyx
from mito_monai.io.errors import DataError
from mito_monai.io.hdf5 import read_hdf5, split_h5_path
from mito_monai.io.image_folder import list_image_files, read_image_2d, read_image_files
from mito_monai.io.nifti_itk import read_itk, read_nifti
from mito_monai.io.paths import (
    HDF5_EXTENSIONS,
    ITK_EXTENSIONS,
    NIFTI_EXTENSIONS,
    PIL_EXTENSIONS,
    TIFF_EXTENSIONS,
    VOLUME_EXTENSIONS,
    PathLike,
    file_suffix,
    require_exists,
)
from mito_monai.io.tiff import read_tiff
from mito_monai.io.zarr_store import is_zarr_path, open_zarr_volume

__all__ = ["read_volume"]


def read_volume(path: PathLike, key: str | None = None, *, label: bool = False) -> np.ndarray:
    """Read a volume from a file or a folder of 2D slices.

    Args:
        path: a volume file, a 2D image file, a folder of 2D slices, or ``"file.h5:key"``.
        key: HDF5 dataset name; when None and the file holds exactly one dataset, that one is used.
        label: binarise as "non-zero" to uint8 {0, 1} (masks, instance IDs).

    Returns:
        (Z, Y, X) array: native dtype for images (bool becomes uint8), uint8 {0, 1} for labels.

    Raises:
        DataError: missing path, empty folder, non-image file in a slice folder, corrupt file,
            slices of different shapes, wrong HDF5 key, NaN/Inf voxels, colour label image, or an
            unknown suffix.
    """
    if is_zarr_path(path):
        info = open_zarr_volume(path, key)
        return finish_array(np.asarray(info.array[info.index]), Path(info.name), label)
    path, key = split_h5_path(path, key)
    require_exists(path)
    if path.is_dir():
        return read_image_files(list_image_files(path), label=label)
    suffix = file_suffix(path)
    if key is not None and suffix not in HDF5_EXTENSIONS:
        raise DataError(f"{path}: a dataset key ({key!r}) was given but the file is not HDF5")
    if suffix in TIFF_EXTENSIONS:
        arr = read_tiff(path, label)
    elif suffix in PIL_EXTENSIONS:
        arr = read_image_2d(path, label)[None]
    elif suffix in HDF5_EXTENSIONS:
        arr = read_hdf5(path, key)
        if arr.ndim == 4 and arr.shape[-1] in (3, 4):
            arr = colour_to_grey(arr, path, label)
        arr = to_zyx(arr, path)
    elif suffix in NIFTI_EXTENSIONS:
        arr = read_nifti(path)
    elif suffix in ITK_EXTENSIONS:
        arr = read_itk(path, label)
    else:
        raise DataError(
            f"{path}: unknown file type {suffix or '(no suffix)'!r}; expected a folder of 2D images or one of "
            + ", ".join(VOLUME_EXTENSIONS)
        )
    return finish_array(arr, path, label)
