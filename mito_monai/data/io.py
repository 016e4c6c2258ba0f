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
  :mod:`mito_monai.data.zarr_store`; for lazy box-wise access use :func:`mito_monai.data.open_volume`.

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

Every problem with the input is raised as :class:`~mito_monai.data.errors.DataError` with a one-line
message naming the file or folder.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path, PurePath
from types import TracebackType

import numpy as np

from mito_monai.data.errors import DataError
from mito_monai.data.zarr_store import is_zarr_path, open_zarr_volume

__all__ = [
    "IMAGE_SLICE_EXTENSIONS",
    "VOLUME_EXTENSIONS",
    "VolumeWriter",
    "natural_sort_key",
    "list_image_files",
    "list_h5_datasets",
    "split_h5_path",
    "read_image_files",
    "read_volume",
    "probe_volume",
    "write_volume",
    "open_volume_writer",
]

PathLike = str | os.PathLike

#: Suffixes accepted for the 2D slices of a folder volume.
IMAGE_SLICE_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
_TIFF_EXTENSIONS = (".tif", ".tiff")
_PIL_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
_HDF5_EXTENSIONS = (".h5", ".hdf5", ".hdf")
_NIFTI_EXTENSIONS = (".nii", ".nii.gz")
_ITK_EXTENSIONS = (".mha", ".mhd", ".nrrd", ".nhdr", ".vtk", ".gipl", ".mrc", ".rec")
# Detached-header formats write two files, which cannot be replaced atomically as one.
_ITK_WRITE_EXTENSIONS = (".mha", ".nrrd", ".vtk", ".gipl", ".mrc")
#: Suffixes accepted for single-file volumes.
VOLUME_EXTENSIONS: tuple[str, ...] = (
    _TIFF_EXTENSIONS + _PIL_EXTENSIONS + _HDF5_EXTENSIONS + _NIFTI_EXTENSIONS + _ITK_EXTENSIONS
)
_IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini"})
# TIFF files above this size need the BigTIFF variant (classic TIFF offsets are 32-bit).
_BIGTIFF_THRESHOLD = 2**31 - 2**26
_NUMBER = re.compile(r"(\d+)")


# ----------------------------------------------------------------------------------------------
# names and listings
# ----------------------------------------------------------------------------------------------
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


def _suffix(path: Path) -> str:
    """Lower-case suffix with the double ``.nii.gz`` recognised."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in _IGNORED_NAMES


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
        if _is_ignored(entry.name) or entry.is_dir():
            continue
        path = folder / entry.name
        if _suffix(path) not in IMAGE_SLICE_EXTENSIONS:
            raise DataError(
                f"{path}: not an image file in the image folder {folder}; expected only "
                f"{'/'.join(e.lstrip('.') for e in IMAGE_SLICE_EXTENSIONS)} slices (move it elsewhere)"
            )
        images.append(path)
    if not images:
        raise DataError(f"folder {folder} is empty; expected 2D image slices ({', '.join(IMAGE_SLICE_EXTENSIONS)})")
    return sorted(images, key=natural_sort_key)


def split_h5_path(path: PathLike, key: str | None = None) -> tuple[Path, str | None]:
    """Split ``"file.h5:key"`` into ``(Path("file.h5"), "key")``; other paths pass through.

    Raises:
        DataError: ``key`` is given twice and the two values differ.
    """
    text = os.fspath(path)
    lower = text.lower()
    for ext in _HDF5_EXTENSIONS:
        idx = lower.find(ext + ":")
        if idx > 0:
            file_part, key_part = text[: idx + len(ext)], text[idx + len(ext) + 1 :]
            if key is not None and key_part and key != key_part:
                raise DataError(f"{text}: the dataset key is given twice ({key_part!r} in the path, {key!r} as key)")
            return Path(file_part), (key_part or key)
    return Path(text), key


def list_h5_datasets(path: PathLike) -> list[str]:
    """Names (full paths inside the file) of all datasets of an HDF5 file."""
    import h5py

    path = Path(path)
    _require_exists(path)
    names: list[str] = []
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    except OSError as e:
        raise DataError(f"{path}: cannot be opened as HDF5 ({e}); the file may be corrupt") from e
    return names


def _require_exists(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path} does not exist; expected an image volume file or a folder of 2D slices")


# ----------------------------------------------------------------------------------------------
# array helpers
# ----------------------------------------------------------------------------------------------
def _colour_to_grey(arr: np.ndarray, source: Path, label: bool) -> np.ndarray:
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


def _finish(arr: np.ndarray, source: Path, label: bool) -> np.ndarray:
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


def _to_zyx(arr: np.ndarray, source: Path) -> np.ndarray:
    """Drop singleton axes beyond three and add Z to 2D arrays."""
    while arr.ndim > 3 and 1 in arr.shape:
        arr = arr.squeeze(axis=arr.shape.index(1))
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise DataError(f"{source}: array of shape {arr.shape}; expected a 2D image or a 3D (Z, Y, X) volume")
    return arr


# ----------------------------------------------------------------------------------------------
# format readers (raw arrays, before _finish)
# ----------------------------------------------------------------------------------------------
def _read_pil(path: Path, label: bool) -> np.ndarray:
    from PIL import Image

    if label and _suffix(path) in (".jpg", ".jpeg"):
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
        arr = _colour_to_grey(arr, path, label)
    return arr


def _read_tiff(path: Path, label: bool) -> np.ndarray:
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
            arr = _colour_to_grey(np.moveaxis(arr, s_axis, -1), path, label)
        elif arr.shape[s_axis] == 1:
            arr = arr.squeeze(axis=s_axis)
        else:
            raise DataError(f"{path}: TIFF with {arr.shape[s_axis]} samples per pixel; expected grey, RGB or RGBA")
    return _to_zyx(arr, path)


def _read_hdf5(path: Path, key: str | None) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            names: list[str] = []
            f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            key = _resolve_h5_key(path, key, names)
            arr = f[key][()]
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"{path}: cannot be read as HDF5 ({e}); the file may be corrupt") from e
    return np.asarray(arr)


def _resolve_h5_key(path: Path, key: str | None, names: Sequence[str]) -> str:
    if not names:
        raise DataError(f"{path}: HDF5 file holds no dataset; expected one (Z, Y, X) dataset")
    listing = ", ".join(repr(n) for n in names[:20]) + (" ..." if len(names) > 20 else "")
    if key is None:
        if len(names) == 1:
            return names[0]
        raise DataError(
            f"{path}: HDF5 file holds {len(names)} datasets ({listing}); choose one with key=... or '{path.name}:KEY'"
        )
    normalised = key.strip("/")
    if normalised not in names:
        raise DataError(f"{path}: no dataset {key!r} in the HDF5 file; datasets that exist: {listing}")
    return normalised


def _read_nifti(path: Path) -> np.ndarray:
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


def _read_itk(path: Path, label: bool) -> np.ndarray:
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
        arr = _colour_to_grey(arr, path, label)
    return _to_zyx(arr, path)


def _read_2d_file(path: Path, label: bool) -> np.ndarray:
    """One slice of a folder volume: (Y, X), already finished (dtype checks, binarisation)."""
    suffix = _suffix(path)
    if suffix in _TIFF_EXTENSIONS:
        arr = _read_tiff(path, label)
        if arr.shape[0] != 1:
            raise DataError(
                f"{path}: TIFF with {arr.shape[0]} pages inside a slice folder; expected one 2D image per file"
            )
        arr = arr[0]
    else:
        arr = _read_pil(path, label)
    return _finish(arr, path, label)


# ----------------------------------------------------------------------------------------------
# public readers
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
        _require_exists(p)
    first = _read_2d_file(paths[0], label)
    out = np.empty((len(paths),) + first.shape, dtype=first.dtype)
    out[0] = first
    for z, path in enumerate(paths[1:], start=1):
        sl = _read_2d_file(path, label)
        if sl.shape != first.shape:
            raise DataError(
                f"{path}: slice shape {sl.shape} differs from {paths[0].name} {first.shape}; "
                f"all slices of {path.parent} must have the same shape"
            )
        if sl.dtype != out.dtype:
            out = out.astype(np.result_type(out.dtype, sl.dtype))
        out[z] = sl
    return out


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
        return _finish(np.asarray(info.array[info.index]), Path(info.name), label)
    path, key = split_h5_path(path, key)
    _require_exists(path)
    if path.is_dir():
        return read_image_files(list_image_files(path), label=label)
    suffix = _suffix(path)
    if key is not None and suffix not in _HDF5_EXTENSIONS:
        raise DataError(f"{path}: a dataset key ({key!r}) was given but the file is not HDF5")
    if suffix in _TIFF_EXTENSIONS:
        arr = _read_tiff(path, label)
    elif suffix in _PIL_EXTENSIONS:
        arr = _read_pil(path, label)[None]
    elif suffix in _HDF5_EXTENSIONS:
        arr = _read_hdf5(path, key)
        if arr.ndim == 4 and arr.shape[-1] in (3, 4):
            arr = _colour_to_grey(arr, path, label)
        arr = _to_zyx(arr, path)
    elif suffix in _NIFTI_EXTENSIONS:
        arr = _read_nifti(path)
    elif suffix in _ITK_EXTENSIONS:
        arr = _read_itk(path, label)
    else:
        raise DataError(
            f"{path}: unknown file type {suffix or '(no suffix)'!r}; expected a folder of 2D images or one of "
            + ", ".join(VOLUME_EXTENSIONS)
        )
    return _finish(arr, path, label)


def probe_volume(path: PathLike, key: str | None = None) -> tuple[tuple[int, int, int], np.dtype]:
    """Shape (Z, Y, X) and dtype of a volume, without reading all of it where the format allows.

    Folders are probed from their first slice and their number of files; TIFF, HDF5 and NIfTI from
    their headers; other formats are read.
    """
    if is_zarr_path(path):
        info = open_zarr_volume(path, key)
        return info.shape, np.dtype(info.array.dtype)
    path, key = split_h5_path(path, key)
    _require_exists(path)
    if path.is_dir():
        files = list_image_files(path)
        first = _read_2d_file(files[0], label=False)
        return (len(files),) + tuple(first.shape), first.dtype  # type: ignore[return-value]
    suffix = _suffix(path)
    if suffix in _HDF5_EXTENSIONS:
        import h5py

        names = list_h5_datasets(path)
        key = _resolve_h5_key(path, key, names)
        with h5py.File(path, "r") as f:
            shape, dtype = f[key].shape, f[key].dtype
        shape = tuple(int(s) for s in shape)
        if len(shape) == 4 and shape[-1] in (3, 4):
            shape = shape[:3]
        shape = shape if len(shape) != 2 else (1,) + shape
        return shape, np.dtype(dtype)  # type: ignore[return-value]
    if suffix in _TIFF_EXTENSIONS:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tf:
                if len(tf.series) == 1:
                    s = tf.series[0]
                    dims = [n for n, a in zip(s.shape, s.axes) if a != "S" and n != 1]
                    if 2 <= len(dims) <= 3:
                        dims = dims if len(dims) == 3 else [1] + dims
                        dtype = np.dtype(np.uint8) if s.dtype == bool else np.dtype(s.dtype)
                        return tuple(dims), dtype  # type: ignore[return-value]
        except Exception as e:
            raise DataError(f"{path}: cannot be read as TIFF ({e}); the file may be corrupt or truncated") from e
    if suffix in _NIFTI_EXTENSIONS:
        import nibabel as nib

        try:
            img = nib.load(str(path))
            shape = tuple(int(s) for s in img.shape)
            scaled = img.dataobj.slope != 1 or img.dataobj.inter != 0
            dtype = np.dtype(np.float64) if scaled else np.dtype(img.get_data_dtype())
        except Exception as e:
            raise DataError(f"{path}: cannot be read as NIfTI ({e}); the file may be corrupt or truncated") from e
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) in (2, 3):
            zyx = tuple(reversed(shape))
            return ((1,) + zyx if len(zyx) == 2 else zyx), dtype  # type: ignore[return-value]
    arr = read_volume(path, key)
    return tuple(int(s) for s in arr.shape), arr.dtype  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------
def _write_format(path: Path, trailing_sep: bool) -> str:
    suffix = _suffix(path)
    if trailing_sep or suffix == "":
        return "png"
    if suffix in _TIFF_EXTENSIONS:
        return "tiff"
    if suffix in _HDF5_EXTENSIONS:
        return "hdf5"
    if suffix in _NIFTI_EXTENSIONS:
        return "nifti"
    if suffix in _ITK_WRITE_EXTENSIONS:
        return "itk"
    raise DataError(
        f"{path}: cannot write {suffix!r} files; use a folder path (PNG slices), .tif, .h5, .nii(.gz), "
        + ", ".join(_ITK_WRITE_EXTENSIONS)
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
            entries = [e for e in os.listdir(dest) if not _is_ignored(e)]
            if entries and not overwrite:
                raise DataError(f"folder {dest} already exists and is not empty; pass overwrite=True to replace it")
            foreign = [e for e in entries if (dest / e).is_dir() or _suffix(Path(e)) not in IMAGE_SLICE_EXTENSIONS]
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
    suffix = _suffix(dest)
    stem = dest.name[: len(dest.name) - len(suffix)]
    return dest.parent / f".{stem}.{token}.tmp{suffix}"


def _commit_dir(tmp: Path, dest: Path) -> None:
    """Move a finished temporary folder into place, replacing ``dest`` if it exists."""
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


def _png_name(z: int, depth: int) -> str:
    return f"{z:0{max(4, len(str(depth - 1)))}d}.png"


def _save_png(path: Path, sl: np.ndarray, compress: bool) -> None:
    from PIL import Image

    Image.fromarray(sl).save(path, format="PNG", compress_level=9 if compress else 6)


def _tiff_page_kwargs(compress: bool) -> dict:
    return {"photometric": "minisblack", "metadata": None, "compression": "zlib" if compress else None}


def _write_nifti(tmp: Path, arr: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(arr.transpose(2, 1, 0), affine=np.eye(4))
    img.header.set_data_dtype(arr.dtype)
    nib.save(img, str(tmp))


def _write_itk(tmp: Path, arr: np.ndarray, compress: bool) -> None:
    import itk

    try:
        image = itk.image_view_from_array(np.ascontiguousarray(arr))
        itk.imwrite(image, str(tmp), compression=compress)
    except Exception as e:
        raise DataError(
            f"{tmp.name}: ITK cannot write voxels of type {arr.dtype} ({str(e).splitlines()[0]}); "
            "cast to uint8/uint16/int16/float32 or write .tif/.h5 instead"
        ) from e


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
                _save_png(tmp / _png_name(z, arr.shape[0]), arr[z], compress)
            _commit_dir(tmp, dest)
            return dest
        if fmt == "tiff":
            import tifffile

            with tifffile.TiffWriter(tmp, bigtiff=arr.nbytes > _BIGTIFF_THRESHOLD) as tw:
                for z in range(arr.shape[0]):
                    tw.write(arr[z], **_tiff_page_kwargs(compress))
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
            _write_nifti(tmp, arr)
        else:
            _write_itk(tmp, arr, compress)
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
                self._handle = tifffile.TiffWriter(self._tmp, bigtiff=nbytes > _BIGTIFF_THRESHOLD)
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
            self._handle.write(sl, **_tiff_page_kwargs(self.compress))
        elif self.format == "hdf5":
            self._dataset[z] = sl
        elif self.format == "png":
            _save_png(self._tmp / _png_name(z, self.shape[0]), sl, self.compress)
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
                _commit_dir(self._tmp, self.path)
            else:
                self._memmap.flush()
                if self.format == "nifti":
                    _write_nifti(self._tmp, self._memmap)
                else:
                    _write_itk(self._tmp, self._memmap, self.compress)
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
