"""A MONAI dataset of the Z slices of one split of a dataset layout."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from monai.data import Dataset

from mito_monai.datasets.registry import get_layout
from mito_monai.datasets.splits import load_split

__all__ = ["EMSliceDataset", "clear_slice_cache"]

_CACHE: OrderedDict[tuple, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4


def clear_slice_cache() -> None:
    """Forget the volumes shared between :class:`EMSliceDataset` instances."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _load(layout: str, root: Path, split: str, with_label: bool, cache: bool) -> tuple[np.ndarray, np.ndarray | None]:
    if not cache:
        return load_split(layout, root, split, with_label=with_label)
    key = (layout, str(root.resolve()), split, with_label)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        labelled_key = key[:3] + (True,)
        if not with_label and labelled_key in _CACHE:
            # the unlabelled slices of a semi-supervised split: share the image volume already in memory
            _CACHE.move_to_end(labelled_key)
            return _CACHE[labelled_key][0], None
    arrays = load_split(layout, root, split, with_label=with_label)
    with _CACHE_LOCK:
        _CACHE[key] = arrays
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return arrays


class EMSliceDataset(Dataset):
    """The Z slices of one split of a dataset, one dictionary per slice.

    The split is loaded into memory once (native dtype, through :func:`mito_monai.datasets.open_split`, so
    any stack :func:`mito_monai.io.open_volume` opens works, zarr / OME-Zarr included) and every item
    is built from views of the volume. Item ``i`` is, before ``transform``::

        {"image": float32 array (1, Y, X),   # raw intensities, NOT normalised
         "label": uint8 array (1, Y, X),     # {0, 1}; only with with_label=True and labels present
         "slice_index": int,                 # z index in the split's volume
         "volume": str}                      # "<root folder name>/<split>"

    The float32 image and the label are fresh arrays for every access, so transforms may modify them
    in place. Normalisation belongs to the transform chain.

    Whole volumes are held in memory: this class is meant for stacks like VNC III, Lucchi and
    Lucchi++ (up to a few GB). MitoEM-size volumes (1000 x 4096 x 4096) are out of its scope; read
    those block-wise instead.

    Args:
        layout: dataset layout name (see :func:`mito_monai.datasets.available_layouts`).
        root: dataset root folder.
        split: split name (see :func:`mito_monai.datasets.list_splits`).
        transform: MONAI transform(s) applied to every item.
        with_label: load labels and put them in the items (a split without labels yields none).
        slices: z indices to keep, in the given order (e.g. the labelled slices of a
            semi-supervised partition); all slices when None.
        cache: share the loaded arrays with other instances for the same (layout, root, split,
            with_label) in this process (up to 4 splits are kept); with False the split is re-read.

    Attributes:
        image: the (Z, Y, X) image volume, native dtype.
        label: the (Z, Y, X) uint8 label volume, or None.
        slices: the z indices of the items.
        volume_name: the ``"volume"`` entry of the items.

    Raises:
        DataError: the data cannot be found or read (see :func:`mito_monai.datasets.load_split`).
        ValueError / TypeError: ``slices`` holds an index out of range or a non-integer.
    """

    def __init__(
        self,
        layout: str,
        root: str | os.PathLike,
        split: str,
        transform: Sequence[Callable] | Callable | None = None,
        with_label: bool = True,
        slices: Sequence[int] | None = None,
        cache: bool = True,
    ) -> None:
        get_layout(layout)  # unknown names fail before any reading
        root = Path(root)
        self.layout, self.root, self.split = layout, root, split
        self.image, self.label = _load(layout, root, split, with_label, cache)
        depth = self.image.shape[0]
        if slices is None:
            indices = list(range(depth))
        else:
            indices = []
            for z in slices:
                if isinstance(z, bool) or not isinstance(z, (int, np.integer)):
                    raise TypeError(f"slices must hold integers, got {z!r} ({type(z).__name__})")
                if not 0 <= int(z) < depth:
                    raise ValueError(f"slice index {int(z)} out of range: split {split!r} of {root} has {depth} slices")
                indices.append(int(z))
        self.slices = indices
        self.volume_name = f"{root.name}/{split}"
        items = []
        for z in indices:
            item = {"image": self.image[z : z + 1], "slice_index": z, "volume": self.volume_name}
            if self.label is not None:
                item["label"] = self.label[z : z + 1]
            items.append(item)
        super().__init__(data=items, transform=transform)

    def _transform(self, index: int):
        item = dict(self.data[index])
        item["image"] = item["image"].astype(np.float32)
        if "label" in item:
            item["label"] = item["label"].copy()
        return self.transform(item)
