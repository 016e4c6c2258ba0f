"""Folders of 2D images, one file per Z slice: listing in natural order, reading, PNG slices for the writers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mito_monai.io.arrays import colour_to_grey, finish_array
from mito_monai.io.errors import DataError
from mito_monai.io.paths import (
    IMAGE_SLICE_EXTENSIONS,
    TIFF_EXTENSIONS,
    PathLike,
    file_suffix,
    is_ignored_name,
    natural_sort_key,
    require_exists,
)
from mito_monai.io.tiff import read_tiff

__all__ = ["list_image_files", "read_image_2d", "read_slice_file", "read_image_files", "png_name", "save_png"]


def list_image_files(folder: PathLike) -> list[Path]:
    """The 2D image files of a slice folder, naturally sorted by name.

    Hidden files, ``Thumbs.db``, ``desktop.ini`` and sub-folders are ignored.

    Raises:
        DataError: the folder does not exist or is not a folder, holds no image file, or holds a
            file that is not an image (the message names it).
    """
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"folder {folder} does not exist; expected a folder of 2D image slices")
    if not folder.is_dir():
        raise DataError(f"{folder} is a file; expected a folder of 2D image slices")
    images: list[Path] = []
    for entry in os.scandir(folder):
        if is_ignored_name(entry.name) or entry.is_dir():
            continue
        path = folder / entry.name
        if file_suffix(path) not in IMAGE_SLICE_EXTENSIONS:
            raise DataError(
                f"{path}: not an image file in the image folder {folder}; expected only "
                f"{'/'.join(e.lstrip('.') for e in IMAGE_SLICE_EXTENSIONS)} slices (move it elsewhere)"
            )
        images.append(path)
    if not images:
        raise DataError(f"folder {folder} is empty; expected 2D image slices ({', '.join(IMAGE_SLICE_EXTENSIONS)})")
    return sorted(images, key=natural_sort_key)


def read_image_2d(path: Path, label: bool) -> np.ndarray:
    from PIL import Image

    if label and file_suffix(path) in (".jpg", ".jpeg"):
        raise DataError(
            f"{path}: JPEG label; JPEG compression is lossy and its noise around edges would be read as "
            "foreground (labels are binarised as non-zero): save masks as PNG or TIFF"
        )

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("P", "PA"):
                im = im.convert("RGBA")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            elif mode in ("LA", "La"):
                im = im.getchannel(0)
            arr = np.array(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot be read as an image ({e}); the file may be corrupt or truncated") from e
    if arr.ndim == 3:
        if arr.shape[-1] not in (3, 4):
            raise DataError(f"{path}: image with {arr.shape[-1]} channels; expected grey, RGB or RGBA")
        arr = colour_to_grey(arr, path, label)
    return arr


def read_slice_file(path: Path, label: bool) -> np.ndarray:
    """One slice of a folder volume: (Y, X), already finished (dtype checks, binarisation)."""
    suffix = file_suffix(path)
    if suffix in TIFF_EXTENSIONS:
        arr = read_tiff(path, label)
        if arr.shape[0] != 1:
            raise DataError(
                f"{path}: TIFF with {arr.shape[0]} pages inside a slice folder; expected one 2D image per file"
            )
        arr = arr[0]
    else:
        arr = read_image_2d(path, label)
    return finish_array(arr, path, label)


# ----------------------------------------------------------------------------------------------


def read_image_files(files: Sequence[PathLike], *, label: bool = False) -> np.ndarray:
    """Stack 2D image files, in the given order, into a (Z, Y, X) volume.

    Args:
        files: paths of 2D images (PNG/TIFF/JPEG/BMP), one per Z slice.
        label: binarise every slice as "non-zero" to uint8 {0, 1}.

    Returns:
        (Z, Y, X) array; the dtype of the slices (promoted if they differ) or uint8 for labels.

    Raises:
        DataError: no file given, a file is unreadable, or two slices differ in shape (the message
            names the first offending file and both shapes).
    """
    paths = [Path(f) for f in files]
    if not paths:
        raise DataError("no image files given; expected at least one 2D slice")
    for p in paths:
        require_exists(p)
    first = read_slice_file(paths[0], label)
    out = np.empty((len(paths),) + first.shape, dtype=first.dtype)
    out[0] = first
    for z, path in enumerate(paths[1:], start=1):
        sl = read_slice_file(path, label)
        if sl.shape != first.shape:
            raise DataError(
                f"{path}: slice shape {sl.shape} differs from {paths[0].name} {first.shape}; "
                f"all slices of {path.parent} must have the same shape"
            )
        if sl.dtype != out.dtype:
            out = out.astype(np.result_type(out.dtype, sl.dtype))
        out[z] = sl
    return out


def png_name(z: int, depth: int) -> str:
    return f"{z:0{max(4, len(str(depth - 1)))}d}.png"


def save_png(path: Path, sl: np.ndarray, compress: bool) -> None:
    from PIL import Image

    Image.fromarray(sl).save(path, format="PNG", compress_level=9 if compress else 6)
