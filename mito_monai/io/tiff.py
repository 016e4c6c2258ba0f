"""Multi-page TIFF through tifffile: reading a stack, the page options of the writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mito_monai.io.arrays import colour_to_grey, to_zyx
from mito_monai.io.errors import DataError

__all__ = ["BIGTIFF_THRESHOLD", "read_tiff", "tiff_page_kwargs"]

#: TIFF files above this size need the BigTIFF variant (classic TIFF offsets are 32-bit).
BIGTIFF_THRESHOLD = 2**31 - 2**26


def read_tiff(path: Path, label: bool) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series
            if not series:
                raise DataError(f"{path}: TIFF file holds no image; expected a 2D image or a stack of pages")
            if len(series) > 1 and len({(s.shape, s.dtype) for s in series}) > 1:
                shapes = ", ".join(str(s.shape) for s in series[:4])
                raise DataError(
                    f"{path}: TIFF holds {len(series)} image series of different shapes ({shapes}); "
                    "expected one stack of equally sized pages"
                )
            if len(series) > 1:
                arr = np.stack([s.asarray() for s in series])
                axes = "Q" + series[0].axes
            else:
                arr = series[0].asarray()
                axes = series[0].axes
    except DataError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # tifffile raises many types for damaged files
        raise DataError(f"{path}: cannot be read as TIFF ({e}); the file may be corrupt or truncated") from e
    if "S" in axes:
        s_axis = axes.index("S")
        if arr.shape[s_axis] in (3, 4):
            arr = colour_to_grey(np.moveaxis(arr, s_axis, -1), path, label)
        elif arr.shape[s_axis] == 1:
            arr = arr.squeeze(axis=s_axis)
        else:
            raise DataError(f"{path}: TIFF with {arr.shape[s_axis]} samples per pixel; expected grey, RGB or RGBA")
    return to_zyx(arr, path)


def tiff_page_kwargs(compress: bool) -> dict:
    return {"photometric": "minisblack", "metadata": None, "compression": "zlib" if compress else None}
