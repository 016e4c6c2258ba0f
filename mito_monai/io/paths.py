"""Names of volume files: suffixes by format, natural sort order, the names a slice folder ignores."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePath

from mito_monai.io.errors import DataError

__all__ = [
    "PathLike",
    "IMAGE_SLICE_EXTENSIONS",
    "TIFF_EXTENSIONS",
    "PIL_EXTENSIONS",
    "HDF5_EXTENSIONS",
    "NIFTI_EXTENSIONS",
    "ITK_EXTENSIONS",
    "ITK_WRITE_EXTENSIONS",
    "VOLUME_EXTENSIONS",
    "natural_sort_key",
    "file_suffix",
    "is_ignored_name",
    "require_exists",
]

PathLike = str | os.PathLike

#: Suffixes accepted for the 2D slices of a folder volume.
IMAGE_SLICE_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
TIFF_EXTENSIONS = (".tif", ".tiff")
PIL_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
HDF5_EXTENSIONS = (".h5", ".hdf5", ".hdf")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
ITK_EXTENSIONS = (".mha", ".mhd", ".nrrd", ".nhdr", ".vtk", ".gipl", ".mrc", ".rec")
#: Detached-header formats write two files, which cannot be replaced atomically as one.
ITK_WRITE_EXTENSIONS = (".mha", ".nrrd", ".vtk", ".gipl", ".mrc")
#: Suffixes accepted for single-file volumes.
VOLUME_EXTENSIONS: tuple[str, ...] = (
    TIFF_EXTENSIONS + PIL_EXTENSIONS + HDF5_EXTENSIONS + NIFTI_EXTENSIONS + ITK_EXTENSIONS
)
_IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini"})
_NUMBER = re.compile(r"(\d+)")


def natural_sort_key(name: PathLike) -> tuple:
    """Sort key that orders the numbers inside names by value: ``2.png`` < ``10.png`` < ``mask11.png``.

    Args:
        name: a file name or path (only the final component of a path is used).

    Returns:
        a tuple usable as ``key`` for :func:`sorted`; names that differ only by zero padding
        (``1.png``, ``01.png``) are ordered by the plain string as a tie-break.
    """
    text = name.name if isinstance(name, PurePath) else os.path.basename(os.fspath(name))
    key: list[tuple[int, int, str]] = []
    for i, part in enumerate(_NUMBER.split(text)):
        if i % 2:
            key.append((0, int(part), ""))
        elif part:
            key.append((1, 0, part.lower()))
    return (tuple(key), text)



def file_suffix(path: Path) -> str:
    """Lower-case suffix with the double ``.nii.gz`` recognised."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def is_ignored_name(name: str) -> bool:
    """Hidden files, ``Thumbs.db`` and ``desktop.ini``: never slices of a folder volume."""
    return name.startswith(".") or name.lower() in _IGNORED_NAMES


def require_exists(path: Path) -> None:
    """DataError naming ``path`` when it does not exist."""
    if not path.exists():
        raise DataError(f"{path} does not exist; expected an image volume file or a folder of 2D slices")
