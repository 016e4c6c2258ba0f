"""HDF5 through h5py: ``file.h5:key`` paths, the datasets of a file, reading one."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mito_monai.io.errors import DataError
from mito_monai.io.paths import HDF5_EXTENSIONS, PathLike, require_exists

__all__ = ["split_h5_path", "list_h5_datasets", "read_hdf5", "resolve_h5_key"]


def split_h5_path(path: PathLike, key: str | None = None) -> tuple[Path, str | None]:
    """Split ``"file.h5:key"`` into ``(Path("file.h5"), "key")``; other paths pass through.

    Raises:
        DataError: ``key`` is given twice and the two values differ.
    """
    text = os.fspath(path)
    lower = text.lower()
    for ext in HDF5_EXTENSIONS:
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
    require_exists(path)
    names: list[str] = []
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    except OSError as e:
        raise DataError(f"{path}: cannot be opened as HDF5 ({e}); the file may be corrupt") from e
    return names


def read_hdf5(path: Path, key: str | None) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            names: list[str] = []
            f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            key = resolve_h5_key(path, key, names)
            arr = f[key][()]
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"{path}: cannot be read as HDF5 ({e}); the file may be corrupt") from e
    return np.asarray(arr)


def resolve_h5_key(path: Path, key: str | None, names: Sequence[str]) -> str:
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
