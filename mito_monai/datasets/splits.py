"""Opening and loading the splits of a dataset through the one lazy volume API, and summarising them.

Every split is opened through :func:`mito_monai.io.open_volume` (:func:`open_split`), so a zarr / OME-Zarr stack
trains, validates and is described exactly like the same voxels in a TIFF.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mito_monai.datasets.layout import SplitFiles
from mito_monai.datasets.registry import list_splits, split_files
from mito_monai.io.errors import DataError
from mito_monai.io.paths import PathLike
from mito_monai.io.volume import Volume, open_volume

__all__ = ["open_split", "load_split", "dataset_info", "iter_slabs", "parse_split_spec", "volume_foreground_fraction"]


def _shape_mismatch(sf: SplitFiles, image_shape, label_shape) -> DataError:
    return DataError(
        f"image {sf.describe('image')} has shape {tuple(image_shape)} but label {sf.describe('label')} "
        f"has shape {tuple(label_shape)}; image and label must have the same (Z, Y, X) shape"
    )


def _open_part(sf: SplitFiles, part: str) -> Volume:
    files = sf.image_files if part == "image" else sf.label_files
    path, key = (sf.image, sf.image_key) if part == "image" else (sf.label, sf.label_key)
    return open_volume(files if files is not None else path, key, label=part == "label")


def open_split(name: str, root: PathLike, split: str, *, with_label: bool = True) -> tuple[Volume, Volume | None]:
    """Open a split lazily (:func:`mito_monai.io.open_volume`): nothing but headers or first slices is read.

    Returns:
        ``(image, label)`` volumes; the label reads as uint8 {0, 1}, and is None when ``with_label`` is
        False or the split has no labels. Close them (or use them as context managers) when done.

    Raises:
        DataError: as :func:`load_split`, except for unreadable voxels, which only reading finds.
    """
    sf = split_files(name, root, split)
    image = _open_part(sf, "image")
    label = None
    if with_label and sf.label is not None:
        try:
            label = _open_part(sf, "label")
        except BaseException:
            image.close()
            raise
        if label.shape != image.shape:
            image.close()
            label.close()
            raise _shape_mismatch(sf, image.shape, label.shape)
    return image, label


def load_split(
    name: str, root: PathLike, split: str, *, with_label: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a split into memory (through :func:`open_split`).

    Returns:
        ``(image, label)``: image (Z, Y, X) in its native dtype; label (Z, Y, X) uint8 {0, 1}, or
        None when ``with_label`` is False or the split has no labels.

    Raises:
        DataError: unknown layout or split, missing/unpaired files, unreadable data, NaN/Inf voxels, or
            image and label shapes that differ (the message names both and their shapes).
    """
    image_volume, label_volume = open_split(name, root, split, with_label=with_label)
    with image_volume:
        image = image_volume.read(check_finite=True)
    if label_volume is None:
        return image, None
    with label_volume:
        return image, label_volume.read()


def parse_split_spec(spec: str | tuple[str, str, str] | list[str], what: str = "stack") -> tuple[str, str, str]:
    """``(layout, root, split)`` of a command-line ``"LAYOUT:DIR:SPLIT"`` (the folder may hold colons), or of a
    3-sequence; a ``ValueError`` naming ``what`` otherwise."""
    if isinstance(spec, str):
        layout, sep, rest = spec.partition(":")
        root, sep2, split = rest.rpartition(":")
        parts = (layout, root, split) if sep and sep2 else ()
    else:
        parts = tuple(str(p) for p in spec)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"{what} {spec!r}: expected LAYOUT:DIR:SPLIT, e.g. lucchi_pp:data/lucchi_pp:train.")
    return parts  # type: ignore[return-value]


def iter_slabs(volume: Volume, max_voxels: int = 2**26, check_finite: bool = False) -> Iterator[np.ndarray]:
    """The (Z, Y, X) volume read in order as slabs (z, Y, X) of whole slices, about ``max_voxels`` voxels each
    (at least one slice); whole only where the format is read whole. ``check_finite`` as :meth:`Volume.read`."""
    step = max(1, int(max_voxels // max(1, volume.shape[1] * volume.shape[2])))
    for z in range(0, volume.shape[0], step):
        yield volume.read((slice(z, z + step), slice(None), slice(None)), check_finite=check_finite)


def volume_foreground_fraction(label: Volume) -> float:
    """Fraction of non-zero label voxels, read slab by slab (:func:`iter_slabs`)."""
    total = sum(int(np.count_nonzero(slab)) for slab in iter_slabs(label))
    return total / float(np.prod(label.shape))


def dataset_info(name: str, root: PathLike) -> dict:
    """Summary of every split: shape, dtype, label foreground fraction and paths.

    Returns:
        ``{split: {"image_shape": [Z, Y, X], "dtype": "uint8", "label_foreground_fraction": float or
        None, "image": str, "label": str or None}}``. Images are opened lazily (:func:`open_split`: headers
        or first slices); labels are read slab by slab to count the foreground.
    """
    out: dict[str, dict] = {}
    for split in list_splits(name, root):
        sf = split_files(name, root, split)
        image, label = open_split(name, root, split)
        with image:
            shape, dtype = image.shape, image.dtype
        fraction = None
        if label is not None:
            with label:
                fraction = volume_foreground_fraction(label)
        out[split] = {
            "image_shape": [int(s) for s in shape],
            "dtype": str(np.dtype(dtype)),
            "label_foreground_fraction": fraction,
            "image": sf.describe("image"),
            "label": sf.describe("label") if sf.label is not None else None,
        }
    return out
