"""Slice-by-slice access to a (Z, Y, X) stack on disk without loading all of it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mito_monai.data.errors import DataError
from mito_monai.data.io import list_h5_datasets, list_image_files, read_volume, split_h5_path

__all__ = ["SliceSource"]

_TIFF = (".tif", ".tiff")
_HDF5 = (".h5", ".hdf5", ".hdf")


class SliceSource:
    """Read a stack one Z slice at a time, so memory does not grow with the number of slices.

    Multi-page TIFF (page by page), HDF5 (``file.h5`` with ``key`` or ``file.h5:key``; read by
    slicing the dataset) and folders of 2D images (file by file, natural order) are read lazily;
    any other format :func:`mito_monai.data.io.read_volume` supports is loaded whole.

    Args:
        path: the stack.
        key: HDF5 dataset name.
    """

    def __init__(self, path: str | os.PathLike, key: str | None = None) -> None:
        path, key = split_h5_path(path, key)
        self.path = Path(path)
        self.key = key
        self._close = None
        suffix = "".join(self.path.suffixes[-1:]).lower()
        if self.path.is_file() and suffix in _TIFF:
            import tifffile

            try:
                tif = tifffile.TiffFile(self.path)
            except Exception:  # damaged or not a TIFF: read_volume below reports it, naming the file
                tif = None
            series = tif.series[0] if tif is not None and tif.series else None
            shape = () if series is None else series.shape
            if len(shape) == 2:
                shape = (1, *shape)
            if len(shape) != 3 or len(series.pages) != shape[0]:
                # not one grey page per slice (e.g. samples-per-pixel > 1), or unreadable: let the reader decide
                if tif is not None:
                    tif.close()
                self._eager(read_volume(self.path))
            else:
                self._pages = series.pages
                self.shape = tuple(int(s) for s in shape)
                self.dtype = np.dtype(series.dtype)
                self._get = lambda z: np.asarray(self._pages[z].asarray())
                self._close = tif.close
        elif self.path.is_file() and suffix in _HDF5:
            import h5py

            names = list_h5_datasets(self.path)
            if key is None and len(names) == 1:
                key = names[0]
            if key not in names:
                raise DataError(f"{self.path}: no dataset {key!r}; datasets in the file: {names}.")
            f = h5py.File(self.path, "r")
            ds = f[key]
            if ds.ndim == 2:
                self.shape = (1, *ds.shape)
                self._get = lambda z: np.asarray(ds[...])
            elif ds.ndim == 3:
                self.shape = tuple(int(s) for s in ds.shape)
                self._get = lambda z: np.asarray(ds[z])
            else:
                f.close()
                raise DataError(f"{self.path}:{key} has {ds.ndim} dimensions; expected a (Z, Y, X) stack.")
            self.dtype = np.dtype(ds.dtype)
            self.key = key
            self._close = f.close
        elif self.path.is_dir():
            files = list_image_files(self.path)
            first = read_volume(files[0])
            self.shape = (len(files), *first.shape[1:])
            self.dtype = first.dtype
            self._files = files

            def get(z: int) -> np.ndarray:
                s = read_volume(self._files[z])[0]
                if s.shape != self.shape[1:]:
                    raise DataError(
                        f"{self._files[z]} has shape {s.shape}, but {self._files[0]} has {self.shape[1:]}; "
                        "all slices of a stack must have the same shape."
                    )
                return s

            self._get = get
        else:
            self._eager(read_volume(self.path, key=key))

    def _eager(self, volume: np.ndarray) -> None:
        self._volume = volume
        self.shape = tuple(int(s) for s in volume.shape)
        self.dtype = volume.dtype
        self._get = lambda z: self._volume[z]

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, z: int) -> np.ndarray:
        if not 0 <= z < self.shape[0]:
            raise IndexError(f"slice {z} out of range for a stack of {self.shape[0]} slices.")
        return self._get(z)

    def __iter__(self) -> Iterator[np.ndarray]:
        for z in range(self.shape[0]):
            yield self[z]

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> SliceSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
