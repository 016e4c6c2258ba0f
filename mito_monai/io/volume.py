"""One lazy view of any supported (Z, Y, X) stack: shape, dtype, voxel size, and any (z, y, x) box.

:func:`open_volume` opens every format the project reads without loading it whole where the format
allows: multi-page TIFF (page by page), HDF5 datasets (``file.h5:key``), folders of 2D images (file by
file), a list of 2D image files (the slices a dataset layout pairs), zarr v2/v3 arrays, groups and
OME-Zarr images (chunk by chunk, see :mod:`mito_monai.io.zarr_store`). Other formats (NIfTI, ITK) are
read whole on first access. ``label=True`` reads a mask as uint8 {0, 1} (non-zero = foreground), as
:func:`~mito_monai.io.read_volume` does; the readers of the dataset layouts, ``dataset-info``,
``evaluate``, ``instances`` and inference all open their stacks here.

Boxes are written with a box writer: :class:`~mito_monai.io.zarr_store.ZarrBoxWriter` straight
into a zarr array (any order, any process), or :class:`~mito_monai.io.writer.SlabBoxWriter` over a slice-by-slice
:class:`~mito_monai.io.writer.VolumeWriter` (TIFF, HDF5, NIfTI, PNG), which collects the boxes of a slab
of slices and writes the slices once the slab is complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from mito_monai.io.arrays import finish_array
from mito_monai.io.errors import DataError
from mito_monai.io.hdf5 import list_h5_datasets, resolve_h5_key, split_h5_path
from mito_monai.io.image_folder import list_image_files, read_image_files
from mito_monai.io.paths import HDF5_EXTENSIONS, TIFF_EXTENSIONS
from mito_monai.io.read import read_volume
from mito_monai.io.zarr_store import missing_chunks, open_zarr_volume, split_zarr_path

__all__ = ["Volume", "open_volume", "box_to_str"]
Box = Sequence[slice]


def box_to_str(box: Box) -> str:
    """``(slice(0, 8), slice(0, 64), slice(64, 128))`` -> ``"z 0:8, y 0:64, x 64:128"``."""
    return ", ".join(f"{a} {s.start}:{s.stop}" for a, s in zip("zyx", box))


def _full(box: Box | None, shape: Sequence[int]) -> tuple[slice, slice, slice]:
    if box is None:
        return tuple(slice(0, n) for n in shape)  # type: ignore[return-value]
    if len(box) != 3:
        raise ValueError(f"a box has three slices (z, y, x), got {box!r}")
    out = []
    for s, n, a in zip(box, shape, "zyx"):
        start, stop, step = s.indices(n)
        if step != 1 or start >= stop:
            raise ValueError(f"box {box!r}: {a} range {s} is empty or strided for a size of {n}")
        out.append(slice(start, stop))
    return tuple(out)  # type: ignore[return-value]


class Volume:
    """A (Z, Y, X) stack on disk, read lazily box by box.

    Attributes:
        path: the file, folder or zarr node.
        key: the HDF5 dataset or zarr inner path, if any.
        shape: (Z, Y, X).
        dtype: the voxel type on disk (bool is read as uint8).
        voxel_size: (z, y, x) physical voxel size where the format stores one (OME-Zarr scale,
            NIfTI zooms), else None.
        unit: the unit of ``voxel_size`` if known.

    Indexing with an int gives one (Y, X) slice (as ``read`` of that slice); iterating gives the slices
    in order. Use it as a context manager, or call :meth:`close`.

    Args:
        path: a stack in any supported format (see :mod:`mito_monai.io` and the module docstring), or
            a sequence of 2D image files, one per slice in z order.
        key: HDF5 dataset name, or a path inside a zarr store.
        missing_chunks: zarr chunks whose files are absent read as the array's fill value (``"fill"``, the
            zarr convention for empty chunks) or are an error naming the block (``"error"``).
        label: read a mask: every box comes back as uint8 {0, 1} (non-zero = 1), colour label images are
            refused as by :func:`~mito_monai.io.read_volume` with ``label=True``.
    """

    def __init__(
        self, path: str | os.PathLike | Sequence[str | os.PathLike], key: str | None = None,
        missing_chunks: str = "fill", label: bool = False,
    ) -> None:
        if missing_chunks not in ("fill", "error"):
            raise ValueError(f"missing_chunks must be 'fill' or 'error', got {missing_chunks!r}.")
        self.missing_chunks = missing_chunks
        self.label = bool(label)
        self.voxel_size: tuple[float, float, float] | None = None
        self.unit: str | None = None
        self._close = None
        self._open(path, key)
        if self.label:
            self.dtype = np.dtype(np.uint8)

    def _open(self, path, key) -> None:
        if isinstance(path, (list, tuple)):
            if not path:
                raise DataError("no image files given; expected at least one 2D slice")
            files = [Path(f) for f in path]
            self.path, self.key = files[0].parent, None
            self._open_files(files)
            return
        zarr_split = split_zarr_path(path, key)
        if zarr_split is not None:
            self._open_zarr(path, key)
            return
        path, key = split_h5_path(path, key)
        self.path = Path(path)
        self.key = key
        suffix = self.path.suffix.lower()
        if self.path.is_file() and suffix in TIFF_EXTENSIONS:
            self._open_tiff()
        elif self.path.is_file() and suffix in HDF5_EXTENSIONS:
            self._open_hdf5()
        elif self.path.is_dir():
            self._open_folder()
        else:
            self._eager(read_volume(self.path, key=key, label=self.label))
            if self.path.name.lower().endswith((".nii", ".nii.gz")):
                import nibabel as nib

                zooms = nib.load(str(self.path)).header.get_zooms()[:3]
                self.voxel_size = tuple(float(v) for v in reversed(zooms)) if len(zooms) == 3 else None

    # backends ---------------------------------------------------------------------------------
    def _open_zarr(self, path, key) -> None:
        info = open_zarr_volume(path, key)
        store, inner = split_zarr_path(path, key)  # type: ignore[misc]
        self.path, self.key = store, inner or None
        self._name = info.name
        self.shape = info.shape
        self.dtype = np.dtype(info.array.dtype)
        self.voxel_size, self.unit = info.voxel_size, info.unit

        def read(box):
            spatial = iter(box)
            index = tuple(next(spatial) if s == slice(None) else s for s in info.index)
            try:
                data = np.asarray(info.array[index])
            except Exception as e:  # codec / file errors: name the block
                raise DataError(
                    f"{info.name}: cannot read the block {box_to_str(box)} ({type(e).__name__}: {e}); "
                    "a chunk file may be corrupt"
                ) from e
            lost = missing_chunks(info, box) if self.missing_chunks == "error" else []
            if lost:
                raise DataError(
                    f"{info.name}: the block {box_to_str(box)} has {len(lost)} missing chunk file(s) "
                    f"(chunk {lost[0]} first); expected a complete array (missing_chunks='fill' reads them as "
                    f"{info.array.fill_value})"
                )
            return data

        self._read = read

    def _open_tiff(self) -> None:
        import tifffile

        try:
            tif = tifffile.TiffFile(self.path)
        except Exception:  # damaged or not a TIFF: read_volume reports it, naming the file
            tif = None
        all_series = tif.series if tif is not None else []
        series = all_series[0] if all_series else None
        shape = () if series is None else series.shape
        pages = None
        if len(all_series) == 1:
            shape = (1, *shape) if len(shape) == 2 else shape
            pages = series.pages if len(shape) == 3 and len(series.pages) == shape[0] else None
        elif all_series and all(len(s.shape) == 2 and s.shape == shape and s.dtype == series.dtype and len(s.pages) == 1
                                for s in all_series):  # pages written one by one: one series per page
            shape, pages = (len(all_series), *shape), [s.pages[0] for s in all_series]
        if pages is None:
            # not one grey page per slice (e.g. samples-per-pixel > 1), or unreadable: let the reader decide
            if tif is not None:
                tif.close()
            self._eager(read_volume(self.path, label=self.label))
            return
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(np.uint8) if series.dtype == bool else np.dtype(series.dtype)
        self._read = lambda box: self._stack(box, lambda z: np.asarray(pages[z].asarray())[box[1], box[2]])
        self._close = tif.close

    def _open_hdf5(self) -> None:
        import h5py

        key = resolve_h5_key(self.path, self.key, list_h5_datasets(self.path))
        f = h5py.File(self.path, "r")
        ds = f[key]
        if ds.ndim == 2:
            self.shape = (1, *ds.shape)
            self._read = lambda box: np.asarray(ds[box[1], box[2]])[None]
        elif ds.ndim == 3:
            self.shape = tuple(int(s) for s in ds.shape)
            self._read = lambda box: np.asarray(ds[tuple(box)])
        else:  # colour (Z, Y, X, C) or singleton axes: the reader converts them, or names what it found
            f.close()
            self._eager(read_volume(self.path, key=key, label=self.label))
            self.key = key
            return
        self.dtype = np.dtype(ds.dtype)
        self.key = key
        self._close = f.close

    def _open_folder(self) -> None:
        self._open_files(list_image_files(self.path))

    def _open_files(self, files: list[Path]) -> None:
        first = read_image_files(files[:1], label=self.label)
        self.shape = (len(files), *first.shape[1:])
        self.dtype = first.dtype

        def read_slice(z: int) -> np.ndarray:
            s = read_image_files(files[z : z + 1], label=self.label)[0]
            if s.shape != self.shape[1:]:
                raise DataError(
                    f"{files[z]}: slice shape {s.shape} differs from {files[0].name} {self.shape[1:]}; "
                    f"all slices of {files[z].parent} must have the same shape"
                )
            return s

        self._read = lambda box: self._stack(box, lambda z: read_slice(z)[box[1], box[2]])

    def _stack(self, box, read_slice) -> np.ndarray:
        """The slices ``read_slice(z)`` of ``box`` filled into one array (no list of copies)."""
        first = np.asarray(read_slice(box[0].start))
        out = np.empty((box[0].stop - box[0].start, *first.shape), first.dtype)
        out[0] = first
        for i, z in enumerate(range(box[0].start + 1, box[0].stop), start=1):
            sl = np.asarray(read_slice(z))
            if sl.dtype != out.dtype:
                out = out.astype(np.result_type(out.dtype, sl.dtype))
            out[i] = sl
        return out

    def _eager(self, volume: np.ndarray) -> None:
        self.shape = tuple(int(s) for s in volume.shape)
        self.dtype = volume.dtype
        self._read = lambda box: volume[tuple(box)]

    # reading ----------------------------------------------------------------------------------
    def read(self, box: Box | None = None, check_finite: bool = False) -> np.ndarray:
        """The voxels of ``box`` ((z, y, x) slices, default the whole volume) as a numpy array.

        ``check_finite``: NaN or infinite voxels are a DataError naming the volume (as
        :func:`~mito_monai.io.read_volume` does).
        """
        box = _full(box, self.shape)
        data = np.asarray(self._read(box))
        if check_finite and not self.label:
            finish_array(data, str(self), False)
        if self.label:
            return (data != 0).astype(np.uint8)
        if data.dtype == bool:
            return data.view(np.uint8) if data.flags.c_contiguous else data.astype(np.uint8)
        return data

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, z: int) -> np.ndarray:
        if not 0 <= z < self.shape[0]:
            raise IndexError(f"slice {z} out of range for a stack of {self.shape[0]} slices.")
        return self.read((slice(z, z + 1), slice(None), slice(None)))[0]

    def __iter__(self) -> Iterator[np.ndarray]:
        for z in range(self.shape[0]):
            yield self[z]

    def __repr__(self) -> str:
        return f"Volume({self}, shape={self.shape}, dtype={self.dtype})"

    def __str__(self) -> str:
        """The path as a user wrote it: ``file``, ``file.h5:key`` or ``store.zarr/inner``."""
        if hasattr(self, "_name"):
            return str(self._name)
        return f"{self.path}:{self.key}" if self.key else str(self.path)

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_volume(
    path: str | os.PathLike | Sequence[str | os.PathLike], key: str | None = None, missing_chunks: str = "fill",
    label: bool = False,
) -> Volume:
    """Open any supported stack (or a list of 2D slice files) lazily; see :class:`Volume`."""
    return Volume(path, key, missing_chunks, label)
