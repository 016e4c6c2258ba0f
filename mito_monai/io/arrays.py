"""Array checks shared by every reader: colour to grey, dtype and finite checks, label binarisation, (Z, Y, X)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mito_monai.io.errors import DataError

__all__ = ["colour_to_grey", "finish_array", "to_zyx"]


def colour_to_grey(arr: np.ndarray, source: Path, label: bool) -> np.ndarray:
    """(..., C) with C in {3, 4} -> (...): grey when R = G = B, luminance otherwise (images only).

    An RGBA label whose colour channels hold one value everywhere and whose alpha channel is not fully
    opaque everywhere keeps its mask in the alpha channel (a transparent background): alpha is returned.
    """
    red, green, blue = arr[..., 0], arr[..., 1], arr[..., 2]
    if np.array_equal(red, green) and np.array_equal(red, blue):
        if label and arr.shape[-1] == 4:
            alpha = arr[..., 3]
            opaque = np.iinfo(arr.dtype).max if np.issubdtype(arr.dtype, np.integer) else 1.0
            if red.min() == red.max() and alpha.min() < opaque:
                return np.ascontiguousarray(alpha)
        return np.ascontiguousarray(red)
    if label:
        differ = int(np.count_nonzero((red != green) | (red != blue)))
        raise DataError(
            f"{source}: label image is in colour (R, G, B differ in {differ} pixels); "
            "expected a greyscale or binary mask"
        )
    lum = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        return np.clip(np.rint(lum), info.min, info.max).astype(arr.dtype)
    return lum.astype(arr.dtype)


def finish_array(arr: np.ndarray, source: Path, label: bool) -> np.ndarray:
    """Dtype checks, non-finite check and label binarisation shared by all readers."""
    if arr.dtype == bool:
        arr = arr.view(np.uint8) if arr.flags.c_contiguous else arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"{source}: unsupported voxel type {arr.dtype}; expected integer or floating-point values")
    if np.issubdtype(arr.dtype, np.floating):
        bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise DataError(f"{source}: {bad} of {arr.size} voxels are NaN or infinite; expected finite values")
    if label:
        return (arr != 0).astype(np.uint8)
    return arr


def to_zyx(arr: np.ndarray, source: Path) -> np.ndarray:
    """Drop singleton axes beyond three and add Z to 2D arrays."""
    while arr.ndim > 3 and 1 in arr.shape:
        arr = arr.squeeze(axis=arr.shape.index(1))
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise DataError(f"{source}: array of shape {arr.shape}; expected a 2D image or a 3D (Z, Y, X) volume")
    return arr


# ----------------------------------------------------------------------------------------------
