"""NIfTI through nibabel ((X, Y, Z) on disk, (Z, Y, X) here) and the single-file formats ITK reads and writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mito_monai.io.arrays import colour_to_grey, to_zyx
from mito_monai.io.errors import DataError

__all__ = ["read_nifti", "read_itk", "write_nifti", "write_itk"]


def read_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises ImageFileError, EOFError, zlib errors...
        raise DataError(f"{path}: cannot be read as NIfTI ({e}); the file may be corrupt or truncated") from e
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return np.ascontiguousarray(arr.T)[None]
    if arr.ndim != 3:
        raise DataError(f"{path}: NIfTI array of shape {arr.shape}; expected a 2D image or a 3D volume")
    return np.ascontiguousarray(arr.transpose(2, 1, 0))


def read_itk(path: Path, label: bool) -> np.ndarray:
    import itk

    try:
        img = itk.imread(str(path))
        arr = itk.array_from_image(img)
        components = img.GetNumberOfComponentsPerPixel()
    except Exception as e:  # ITK wraps its C++ exceptions as RuntimeError and others
        raise DataError(
            f"{path}: cannot be read by ITK ({e}); the file may be corrupt or of an unsupported type"
        ) from e
    if components > 1:
        if components not in (3, 4):
            raise DataError(f"{path}: image with {components} components per pixel; expected grey, RGB or RGBA")
        arr = colour_to_grey(arr, path, label)
    return to_zyx(arr, path)


def write_nifti(tmp: Path, arr: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(arr.transpose(2, 1, 0), affine=np.eye(4))
    img.header.set_data_dtype(arr.dtype)
    nib.save(img, str(tmp))


def write_itk(tmp: Path, arr: np.ndarray, compress: bool) -> None:
    import itk

    try:
        image = itk.image_view_from_array(np.ascontiguousarray(arr))
        itk.imwrite(image, str(tmp), compression=compress)
    except Exception as e:
        raise DataError(
            f"{tmp.name}: ITK cannot write voxels of type {arr.dtype} ({str(e).splitlines()[0]}); "
            "cast to uint8/uint16/int16/float32 or write .tif/.h5 instead"
        ) from e
