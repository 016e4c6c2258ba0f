"""Writing (Z, Y, X) volumes atomically: whole (:func:`write_volume`), slice by slice (:class:`VolumeWriter`), or box
by box over a slice writer (:class:`SlabBoxWriter`); the format follows the destination's suffix."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from mito_monai.io.errors import DataError
from mito_monai.io.hdf5 import split_h5_path
from mito_monai.io.image_folder import png_name, save_png
from mito_monai.io.nifti_itk import write_itk, write_nifti
from mito_monai.io.paths import (
    HDF5_EXTENSIONS,
    IMAGE_SLICE_EXTENSIONS,
    ITK_WRITE_EXTENSIONS,
    NIFTI_EXTENSIONS,
    TIFF_EXTENSIONS,
    PathLike,
    file_suffix,
    is_ignored_name,
)
from mito_monai.io.tiff import BIGTIFF_THRESHOLD, tiff_page_kwargs

__all__ = ["write_volume", "VolumeWriter", "open_volume_writer", "SlabBoxWriter", "commit_folder"]


def _write_format(path: Path, trailing_sep: bool) -> str:
    suffix = file_suffix(path)
    if trailing_sep or suffix == "":
        return "png"
    if suffix in TIFF_EXTENSIONS:
        return "tiff"
    if suffix in HDF5_EXTENSIONS:
        return "hdf5"
    if suffix in NIFTI_EXTENSIONS:
        return "nifti"
    if suffix in ITK_WRITE_EXTENSIONS:
        return "itk"
    raise DataError(
        f"{path}: cannot write {suffix!r} files; use a folder path (PNG slices), .tif, .h5, .nii(.gz), "
        + ", ".join(ITK_WRITE_EXTENSIONS)
    )


def _parse_destination(path: PathLike, key: str | None) -> tuple[Path, str | None, str]:
    text = os.fspath(path)
    trailing = text.endswith(("/", os.sep))
    dest, key = split_h5_path(text, key)
    fmt = _write_format(dest, trailing)
    if key is not None and fmt != "hdf5":
        raise DataError(f"{dest}: a dataset key ({key!r}) only applies to HDF5 output")
    return dest, key, fmt


def _check_destination(dest: Path, fmt: str, overwrite: bool) -> None:
    if not dest.parent.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "png":
        if dest.exists() and not dest.is_dir():
            raise DataError(f"{dest} is a file; expected a folder for PNG slices")
        if dest.is_dir():
            entries = [e for e in os.listdir(dest) if not is_ignored_name(e)]
            if entries and not overwrite:
                raise DataError(f"folder {dest} already exists and is not empty; pass overwrite=True to replace it")
            foreign = [e for e in entries if (dest / e).is_dir() or file_suffix(Path(e)) not in IMAGE_SLICE_EXTENSIONS]
            if foreign:
                raise DataError(
                    f"folder {dest} holds {foreign[0]!r}, which is not an image slice; refusing to replace it "
                    "(choose another output folder)"
                )
        return
    if dest.is_dir():
        raise DataError(f"{dest} is a folder; expected a file path for {fmt} output")
    if dest.exists() and not overwrite:
        raise DataError(f"{dest} already exists; pass overwrite=True to replace it")


def _temp_sibling(dest: Path, fmt: str) -> Path:
    token = uuid.uuid4().hex[:10]
    if fmt == "png":
        return dest.parent / f".{dest.name}.tmp-{token}"
    suffix = file_suffix(dest)
    stem = dest.name[: len(dest.name) - len(suffix)]
    return dest.parent / f".{stem}.{token}.tmp{suffix}"


def commit_folder(tmp: Path, dest: Path) -> None:
    """Move a finished temporary folder into place, replacing ``dest`` if it exists (the old one is moved aside
    first, then deleted)."""
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:10]}"
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def _remove(path: Path | None) -> None:
    if path is None:
        return
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def _prepare_array(arr: np.ndarray, fmt: str, dest: Path) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise DataError(f"{dest}: cannot write an array of shape {arr.shape}; expected (Z, Y, X) or (Y, X)")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * np.uint8(255 if fmt == "png" else 1)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"{dest}: cannot write voxels of type {arr.dtype}; expected integer or floating-point values")
    if fmt == "png" and arr.dtype not in (np.uint8, np.uint16):
        raise DataError(
            f"{dest}: PNG slices hold uint8 or uint16, not {arr.dtype}; write a .tif or .h5 file instead "
            "(or cast the array)"
        )
    return np.ascontiguousarray(arr)



def write_volume(
    path: PathLike,
    array: np.ndarray,
    key: str | None = None,
    *,
    overwrite: bool = False,
    compress: bool = False,
) -> Path:
    """Write a (Z, Y, X) or (Y, X) array, atomically.

    The format follows ``path``: a path without suffix or ending with ``/`` is a folder of PNG
    slices named ``0000.png``, ``0001.png``...; ``.tif``/``.tiff`` a multi-page TIFF (BigTIFF above
    2 GB); ``.h5``/``.hdf5`` an HDF5 dataset ``key`` (default ``"main"``; ``"file.h5:key"`` works too;
    the whole file is replaced); ``.nii``/``.nii.gz`` NIfTI (axes stored as (X, Y, Z)); ``.mha``,
    ``.nrrd``... through ITK. Bool arrays are written as uint8 ({0, 255} in PNG, {0, 1} elsewhere).

    The data go to a temporary file (or folder) next to ``path``, which replaces ``path`` only
    once complete, so a crash never leaves a half-written output under the final name.

    Args:
        path: destination.
        array: the volume; numpy array or anything ``np.asarray`` accepts.
        key: HDF5 dataset name.
        overwrite: replace an existing file or non-empty folder (a folder is only replaced if it
            holds nothing but image slices).
        compress: zlib/gzip compression for TIFF, HDF5 and ITK; maximum PNG compression. For NIfTI
            compression follows the suffix (``.nii.gz``).

    Returns:
        the path written (without any ``:key`` part).

    Raises:
        DataError: the destination exists (and ``overwrite`` is False), the format cannot hold the
            dtype (e.g. float PNG), or the suffix is unknown.
    """
    dest, key, fmt = _parse_destination(path, key)
    arr = _prepare_array(np.asarray(array), fmt, dest)
    _check_destination(dest, fmt, overwrite)
    tmp = _temp_sibling(dest, fmt)
    try:
        if fmt == "png":
            tmp.mkdir()
            for z in range(arr.shape[0]):
                save_png(tmp / png_name(z, arr.shape[0]), arr[z], compress)
            commit_folder(tmp, dest)
            return dest
        if fmt == "tiff":
            import tifffile

            with tifffile.TiffWriter(tmp, bigtiff=arr.nbytes > BIGTIFF_THRESHOLD) as tw:
                for z in range(arr.shape[0]):
                    tw.write(arr[z], **tiff_page_kwargs(compress))
        elif fmt == "hdf5":
            import h5py

            with h5py.File(tmp, "w") as f:
                f.create_dataset(
                    key or "main",
                    data=arr,
                    chunks=(1,) + arr.shape[1:] if compress else None,
                    compression="gzip" if compress else None,
                )
        elif fmt == "nifti":
            write_nifti(tmp, arr)
        else:
            write_itk(tmp, arr, compress)
        os.replace(tmp, dest)
    except BaseException:
        _remove(tmp)
        raise
    return dest


class VolumeWriter:
    """Write a volume slice by slice, for outputs larger than memory; a context manager.

    Storage per format: TIFF pages are appended as they come (BigTIFF above 2 GB; slices must be
    written in order 0, 1, 2...); HDF5 gets a dataset created up front, chunked per slice; a PNG
    folder gets one file per slice (uint8/uint16 only); NIfTI and ITK formats collect the slices in
    a ``np.memmap`` in a temporary folder beside the output and write the file on close.

    Single files and PNG folders are written under a temporary name and moved into place only when
    :meth:`close` succeeds with every slice written; on an exception inside the ``with`` block (or
    :meth:`abort`) the temporary output is removed.

    Example::

        with open_volume_writer("pred.tif", shape=(Z, Y, X), dtype=np.uint8) as w:
            for z in range(Z):
                w.write_slice(z, predict(z))

    Args:
        path: destination, as for :func:`write_volume`.
        shape: (Z, Y, X).
        dtype: voxel type of the output.
        key: HDF5 dataset name (default ``"main"``).
        overwrite: replace an existing output.
        compress: compress TIFF/HDF5/ITK output.
    """

    def __init__(
        self,
        path: PathLike,
        shape: Sequence[int],
        dtype: np.dtype | type | str,
        key: str | None = None,
        *,
        overwrite: bool = False,
        compress: bool = False,
    ) -> None:
        self.path, self.key, self.format = _parse_destination(path, key)
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (Z, Y, X) with positive sizes, got {shape}")
        self.shape: tuple[int, int, int] = shape  # type: ignore[assignment]
        self.dtype = np.dtype(dtype)
        if self.dtype == bool:
            self.dtype = np.dtype(np.uint8)
        if not (np.issubdtype(self.dtype, np.integer) or np.issubdtype(self.dtype, np.floating)):
            raise ValueError(f"dtype must be an integer or floating-point type, got {self.dtype}")
        if self.format == "png" and self.dtype not in (np.uint8, np.uint16):
            raise DataError(
                f"{self.path}: PNG slices hold uint8 or uint16, not {self.dtype}; write a .tif or .h5 file instead"
            )
        self.overwrite = overwrite
        self.compress = compress
        self._written = np.zeros(shape[0], dtype=bool)
        self._tmp: Path | None = None
        self._scratch: Path | None = None
        self._handle = None
        self._dataset = None
        self._memmap: np.memmap | None = None
        self._state = "new"

    # context manager ------------------------------------------------------------------------
    def __enter__(self) -> VolumeWriter:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # lifecycle --------------------------------------------------------------------------------
    def open(self) -> VolumeWriter:
        """Check the destination and create the temporary output."""
        if self._state != "new":
            raise RuntimeError(f"VolumeWriter for {self.path} is already {self._state}")
        _check_destination(self.path, self.format, self.overwrite)
        self._tmp = _temp_sibling(self.path, self.format)
        try:
            if self.format == "tiff":
                import tifffile

                nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
                self._handle = tifffile.TiffWriter(self._tmp, bigtiff=nbytes > BIGTIFF_THRESHOLD)
            elif self.format == "hdf5":
                import h5py

                self._handle = h5py.File(self._tmp, "w")
                self._dataset = self._handle.create_dataset(
                    self.key or "main",
                    shape=self.shape,
                    dtype=self.dtype,
                    chunks=(1,) + self.shape[1:],
                    compression="gzip" if self.compress else None,
                )
            elif self.format == "png":
                self._tmp.mkdir()
            else:
                # scratch next to the output: same file system, which must hold the result anyway
                self._scratch = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.scratch-", dir=self.path.parent))
                self._memmap = np.memmap(self._scratch / "volume.raw", dtype=self.dtype, mode="w+", shape=self.shape)
        except BaseException:
            self._state = "open"
            self.abort()
            raise
        self._state = "open"
        return self

    def write_slice(self, z: int, array2d: np.ndarray) -> None:
        """Store slice ``z`` (shape (Y, X)).

        Values are cast to the writer's dtype when numpy allows it as a "same kind" cast (e.g.
        float64 -> float32, bool -> uint8); integer values are also accepted when they fit. Floats
        are never silently truncated into an integer output.
        """
        if self._state != "open":
            raise RuntimeError(f"VolumeWriter for {self.path} is {self._state}; use it inside a 'with' block")
        z = int(z)
        if not 0 <= z < self.shape[0]:
            raise ValueError(f"slice index {z} out of range for {self.shape[0]} slices")
        sl = np.asarray(array2d)
        if sl.shape != self.shape[1:]:
            raise ValueError(f"slice {z} has shape {sl.shape}; expected {self.shape[1:]}")
        sl = self._cast(sl, z)
        if self.format == "tiff":
            expected = int(np.count_nonzero(self._written))
            if z != expected:
                raise ValueError(f"TIFF pages are written in order: expected slice {expected}, got {z}")
            self._handle.write(sl, **tiff_page_kwargs(self.compress))
        elif self.format == "hdf5":
            self._dataset[z] = sl
        elif self.format == "png":
            save_png(self._tmp / png_name(z, self.shape[0]), sl, self.compress)
        else:
            self._memmap[z] = sl
        self._written[z] = True

    def _cast(self, sl: np.ndarray, z: int) -> np.ndarray:
        if sl.dtype == self.dtype:
            return sl
        if np.can_cast(sl.dtype, self.dtype, casting="same_kind"):
            return sl.astype(self.dtype)
        if np.issubdtype(sl.dtype, np.integer) and np.issubdtype(self.dtype, np.integer):
            info = np.iinfo(self.dtype)
            if sl.size == 0 or (sl.min() >= info.min and sl.max() <= info.max):
                return sl.astype(self.dtype)
            raise ValueError(f"slice {z} has values outside the range of {self.dtype} [{info.min}, {info.max}]")
        raise ValueError(
            f"slice {z} of type {sl.dtype} cannot be stored as {self.dtype} without losing values; cast it first"
        )

    def close(self) -> Path:
        """Finish the output and move it into place; every slice must have been written."""
        if self._state == "closed":
            return self.path
        if self._state != "open":
            raise RuntimeError(f"VolumeWriter for {self.path} is {self._state}")
        missing = int(self._written.size - np.count_nonzero(self._written))
        if missing:
            self.abort()
            raise DataError(
                f"{self.path}: only {self._written.size - missing} of {self._written.size} slices were written; "
                "the incomplete output was discarded"
            )
        try:
            if self.format in ("tiff", "hdf5"):
                self._handle.close()
                self._handle = None
                os.replace(self._tmp, self.path)
            elif self.format == "png":
                commit_folder(self._tmp, self.path)
            else:
                self._memmap.flush()
                if self.format == "nifti":
                    write_nifti(self._tmp, self._memmap)
                else:
                    write_itk(self._tmp, self._memmap, self.compress)
                self._memmap = None
                os.replace(self._tmp, self.path)
                shutil.rmtree(self._scratch, ignore_errors=True)
        except BaseException:
            self.abort()
            raise
        self._state = "closed"
        return self.path

    def abort(self) -> None:
        """Discard everything written so far; the destination is left as it was."""
        if self._handle is not None:
            try:
                self._handle.close()
            except Exception:
                pass
            self._handle = None
        self._memmap = None
        _remove(self._tmp)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
        self._state = "aborted"


def open_volume_writer(
    path: PathLike,
    shape: Sequence[int],
    dtype: np.dtype | type | str,
    key: str | None = None,
    overwrite: bool = False,
    compress: bool = False,
) -> VolumeWriter:
    """A :class:`VolumeWriter`; use it as ``with open_volume_writer(...) as w: w.write_slice(z, a)``."""
    return VolumeWriter(path, shape, dtype, key, overwrite=overwrite, compress=compress)


class SlabBoxWriter:
    """Write (z, y, x) boxes to a slice-by-slice :class:`VolumeWriter`.

    Boxes are collected per slab of slices (``slab`` slices starting at multiples of ``slab``); when every
    voxel of a slab has been written, its slices go to the writer and the slab is freed, so memory holds
    one slab (or a few when blocks arrive out of order). Slabs are flushed in z order (TIFF needs it).

    Args:
        writer: an open volume writer of shape (Z, Y, X).
        slab: the z size of the blocks that will be written.
        scale_probabilities: write float probabilities in [0, 1] as uint8 0-255.
    """

    def __init__(self, writer: VolumeWriter, slab: int, scale_probabilities: bool = False) -> None:
        self.writer = writer
        self.slab = int(slab)
        self.scale_probabilities = scale_probabilities
        self._pending: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._next = 0

    def write(self, box: Sequence[slice], data: np.ndarray) -> None:
        z0 = box[0].start
        start = z0 - z0 % self.slab
        depth = min(self.slab, self.writer.shape[0] - start)
        if start not in self._pending:
            self._pending[start] = (np.zeros((depth, *self.writer.shape[1:]), self.writer.dtype),
                                    np.zeros((depth, *self.writer.shape[1:]), bool))
        buf, filled = self._pending[start]
        if self.scale_probabilities:
            data = np.round(np.asarray(data, np.float32) * 255).astype(np.uint8)
        local = (slice(box[0].start - start, box[0].stop - start), box[1], box[2])
        buf[local] = data
        filled[local] = True
        while self._next in self._pending and self._pending[self._next][1].all():
            buf, _ = self._pending.pop(self._next)
            for i, sl in enumerate(buf):
                self.writer.write_slice(self._next + i, sl)
            self._next += len(buf)
