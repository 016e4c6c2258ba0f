"""Histogram matching: map an image's intensities so that its quantiles become reference quantiles.

- :func:`intensity_quantiles`: evenly spaced quantiles (levels 0 to 1 inclusive) of the pooled pixels of several
  images, with a deterministic cap on the number of pixels kept.
- :class:`MatchHistogram` / :class:`MatchHistogramd`: the monotone piecewise-linear map from the image's own
  quantiles to the reference quantiles at the same levels.
- :func:`load_reference_quantiles`: a checked reference from a list, an array, a ``{"intensity_quantiles": [...]}``
  mapping or the path of a JSON file holding one.
- :func:`source_intensity_quantiles`, :func:`target_histogram_reference`, :func:`save_histogram_reference`: the
  reference of the r4mito option ``target_histogram_match``: the quantiles of the source training slices after the
  per-slice normalisation, or the ones recorded in the source model's card in a source-free run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_numpy, convert_to_tensor, str2bool

from mito_monai.datasets.splits import iter_slabs, open_split
from mito_monai.transforms.intensity import NormalizePerSlice

__all__ = [
    "MAX_POOLED_VALUES",
    "MatchHistogram",
    "MatchHistogramd",
    "intensity_quantiles",
    "load_reference_quantiles",
    "match_quantiles",
    "quantile_levels",
    "save_histogram_reference",
    "source_intensity_quantiles",
    "target_histogram_reference",
]

#: the most pixel values :func:`intensity_quantiles` keeps; beyond it every image is subsampled with one stride
MAX_POOLED_VALUES = 2**24
#: the key of the reference quantiles in a reference JSON file
QUANTILES_KEY = "intensity_quantiles"
#: the key of the source quantiles in a source model's JSON card
CARD_KEY = "source_intensity_quantiles"


def quantile_levels(num_quantiles: int) -> np.ndarray:
    """The ``num_quantiles`` evenly spaced levels from 0 to 1 inclusive (float64)."""
    if isinstance(num_quantiles, bool) or not isinstance(num_quantiles, (int, np.integer)) or num_quantiles < 2:
        raise ValueError(f"num_quantiles must be an int >= 2, got {num_quantiles!r}.")
    return np.linspace(0.0, 1.0, int(num_quantiles))


def _sorted_quantiles(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Quantiles of sorted 1D ``values`` at ``levels``, linear between order statistics (numpy's default)."""
    position = levels * (values.size - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, values.size - 1)
    a, b = values[low].astype(np.float64), values[high].astype(np.float64)
    return a + (b - a) * (position - low)  # exactly a where a == b


def intensity_quantiles(
    images: Iterable[NdarrayOrTensor] | NdarrayOrTensor,
    num_quantiles: int = 256,
    max_values: int = MAX_POOLED_VALUES,
) -> np.ndarray:
    """The ``num_quantiles`` evenly spaced quantiles (levels 0 to 1 inclusive) of the pooled pixel values of
    ``images``.

    Every pixel of every image counts once, whatever the images' shapes (arrays or tensors of any shape). The
    images are not concatenated: each is flattened and kept with a common stride, and whenever the kept values
    exceed ``max_values`` the stride doubles (every kept part is halved), so at most ``max_values`` values
    (plus the current image) are held and the subsample is deterministic and the same for every image.

    Args:
        images: an iterable of images, or one array/tensor (then that image alone).
        num_quantiles: how many levels (>= 2); level 0 is the minimum, level 1 the maximum.
        max_values: the cap on the pooled values (>= ``num_quantiles``).

    Returns:
        float64 array (num_quantiles,), non-decreasing.

    Raises:
        ValueError: bad ``num_quantiles`` / ``max_values``, no pixel at all, or NaN/Inf pixels (naming the image).
    """
    levels = quantile_levels(num_quantiles)
    if isinstance(max_values, bool) or not isinstance(max_values, (int, np.integer)) or max_values < num_quantiles:
        raise ValueError(f"max_values must be an int >= num_quantiles ({num_quantiles}), got {max_values!r}.")
    if isinstance(images, (np.ndarray, torch.Tensor)):
        images = [images]
    parts: list[np.ndarray] = []
    stride, total = 1, 0
    for index, image in enumerate(images):
        values = np.asarray(convert_to_numpy(image)).reshape(-1)
        if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
            raise ValueError(f"image {index}: expected real numbers, got dtype {values.dtype}.")
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            raise ValueError(f"image {index} has {int((~np.isfinite(values)).sum())} NaN/Inf pixels.")
        part = values[::stride].copy()
        parts.append(part)
        total += part.size
        while total > max_values:
            stride *= 2
            parts = [p[::2] for p in parts]
            total = sum(p.size for p in parts)
    if total == 0:
        raise ValueError("intensity_quantiles needs at least one pixel, got no image or only empty ones.")
    pooled = np.sort(np.concatenate(parts) if len(parts) > 1 else parts[0])
    return _sorted_quantiles(pooled, levels)


def load_reference_quantiles(reference: Any) -> np.ndarray:
    """The checked reference quantiles (float64, 1D) from a list/tuple, array or tensor, a mapping with
    ``"intensity_quantiles"``, or the path (str or ``os.PathLike``) of a JSON file holding such a mapping.

    Raises:
        ValueError: a missing/unreadable file or key, or quantiles that are not 1D, finite, non-decreasing and
            at least 2 long (the message names the file when there is one).
    """
    where = "reference quantiles"
    if isinstance(reference, (str, os.PathLike)):
        path = Path(reference)
        where = str(path)
        try:
            reference = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read a histogram reference JSON file ({e}).") from None
    if isinstance(reference, Mapping):
        if QUANTILES_KEY not in reference:
            raise ValueError(f"{where}: expected a JSON object with {QUANTILES_KEY!r}, got keys {sorted(reference)}.")
        reference = reference[QUANTILES_KEY]
    try:
        q = np.asarray(convert_to_numpy(reference), dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: the quantiles must be a list of numbers ({e}).") from None
    if q.ndim != 1 or q.size < 2:
        raise ValueError(f"{where}: the quantiles must be 1D with at least 2 values, got shape {q.shape}.")
    if not np.isfinite(q).all():
        raise ValueError(f"{where}: the quantiles must be finite, got {int((~np.isfinite(q)).sum())} NaN/Inf.")
    if np.any(np.diff(q) < 0):
        first = int(np.flatnonzero(np.diff(q) < 0)[0])
        raise ValueError(
            f"{where}: the quantiles must be non-decreasing, but value {first + 1} ({q[first + 1]}) is below "
            f"value {first} ({q[first]})."
        )
    return q


def match_quantiles(values: np.ndarray, image_quantiles: np.ndarray, reference_quantiles: np.ndarray) -> np.ndarray:
    """Map ``values`` (any shape) by the monotone piecewise-linear map that sends ``image_quantiles`` to
    ``reference_quantiles`` (the same levels, both non-decreasing); float64 out, same shape.

    Quantiles the image repeats (ties, e.g. integer-valued data) are one point of the map, sent to the mean of
    their reference quantiles. Values beyond the image's first or last quantile go to the reference's first or
    last. A constant image (all quantiles equal) goes to the reference median.
    """
    xp = np.asarray(image_quantiles, dtype=np.float64)
    fp = np.asarray(reference_quantiles, dtype=np.float64)
    if xp.shape != fp.shape:
        raise ValueError(f"image quantiles {xp.shape} and reference quantiles {fp.shape} must have the same length.")
    values = np.asarray(values, dtype=np.float64)
    if xp[0] == xp[-1]:
        return np.full_like(values, np.interp(0.5, quantile_levels(fp.size), fp))
    unique, inverse = np.unique(xp, return_inverse=True)
    mean = np.bincount(inverse, weights=fp) / np.bincount(inverse)
    return np.interp(values, unique, mean)


class MatchHistogram(Transform):
    """Match an image's histogram to reference quantiles.

    The image's own quantiles at the reference's levels (``len(reference)`` evenly spaced levels from 0 to 1,
    :func:`intensity_quantiles` of the whole image) are mapped to the reference quantiles by a monotone
    piecewise-linear map (:func:`match_quantiles`), which is applied to every pixel: the pixel order is kept, and
    after matching the image's quantiles are the reference's (up to ties in the image). An image that already has
    the reference quantiles is unchanged. A constant image becomes the reference median (no division by zero).

    The image may have any shape ((C, H, W) samples, (H, W) slices, stacks); all its pixels are pooled (match each
    slice separately by calling the transform on each). Input numpy, torch or MetaTensor; the output has the
    input's type, device and dtype (an integer image is rounded). The map is computed in float64 with numpy.

    Args:
        reference_quantiles: the reference, as :func:`load_reference_quantiles` takes it (list, array, tensor,
            ``{"intensity_quantiles": [...]}`` or the path of a JSON file holding that).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, reference_quantiles: Any) -> None:
        self.reference_quantiles = load_reference_quantiles(reference_quantiles)

    def image_quantiles(self, img: NdarrayOrTensor) -> np.ndarray:
        """The quantiles of ``img`` at the reference's levels (what :meth:`__call__` computes when not given)."""
        return intensity_quantiles([img], self.reference_quantiles.size)

    def __call__(self, img: NdarrayOrTensor, image_quantiles: np.ndarray | None = None) -> NdarrayOrTensor:
        """
        Args:
            img: array or tensor of any shape.
            image_quantiles: the image's quantiles when already known (e.g. of the whole slice a block is cut
                from); default: :meth:`image_quantiles` of ``img``.
        """
        q = self.image_quantiles(img) if image_quantiles is None else np.asarray(image_quantiles, dtype=np.float64)
        if q.shape != self.reference_quantiles.shape:
            raise ValueError(f"image_quantiles must have shape {self.reference_quantiles.shape}, got {q.shape}.")
        out = match_quantiles(convert_to_numpy(img), q, self.reference_quantiles)
        dtype = img.dtype
        integer = not (torch.is_floating_point(img) if isinstance(img, torch.Tensor) else np.issubdtype(dtype, np.floating))
        if integer:
            out = np.rint(out)
        img = convert_to_tensor(img, track_meta=get_track_meta()) if isinstance(img, torch.Tensor) else img
        return convert_to_dst_type(out, dst=img, dtype=dtype)[0]


class MatchHistogramd(MapTransform):
    """Dictionary-based :class:`MatchHistogram` (every key matched separately to the same reference).

    Args:
        keys: keys of the images to match (not labels).
        reference_quantiles: as :class:`MatchHistogram`.
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = MatchHistogram.backend

    def __init__(self, keys: KeysCollection, reference_quantiles: Any, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.matcher = MatchHistogram(reference_quantiles)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.matcher(d[key])
        return d


# the reference of the r4mito option target_histogram_match ---------------------------------------------------
def source_intensity_quantiles(
    layout: str, root: str | os.PathLike, split: str, num_quantiles: int = 256
) -> np.ndarray:
    """:func:`intensity_quantiles` of the image slices of ``split`` of ``root`` after the per-slice min-max
    normalisation of the training pipelines (:class:`~mito_monai.transforms.NormalizePerSlice`), read slab by slab
    through :func:`mito_monai.datasets.open_split` (labels are not read).

    Raises:
        DataError: as :func:`mito_monai.datasets.open_split`, or NaN/Inf voxels.
    """
    normalize = NormalizePerSlice()
    image, _ = open_split(layout, root, split, with_label=False)
    with image:
        slices = (normalize(slab)[z] for slab in iter_slabs(image, check_finite=True) for z in range(len(slab)))
        return intensity_quantiles(slices, num_quantiles)


def target_histogram_reference(
    enabled: bool | str,
    layout: str,
    root: str | os.PathLike,
    split: str,
    source_free: bool = False,
    source_model: str | os.PathLike | None = None,
    num_quantiles: int = 256,
) -> dict[str, Any] | None:
    """The reference of the option ``target_histogram_match``: ``None`` when off, else
    ``{"intensity_quantiles": [...], "source": "..."}``.

    The quantiles are :func:`source_intensity_quantiles` of the source split (``layout``, ``root``, ``split``). With
    ``source_free`` no source file is opened: the quantiles are ``source_intensity_quantiles`` of the JSON card
    beside the source model (``source_vnc3.pt`` -> ``source_vnc3.json``).

    Raises:
        ValueError: source-free without a card, or a card without (valid) ``source_intensity_quantiles``.
    """
    if not (str2bool(enabled) if isinstance(enabled, str) else bool(enabled)):
        return None
    if not source_free:
        quantiles = source_intensity_quantiles(layout, root, split, num_quantiles)
        return {QUANTILES_KEY: quantiles.tolist(), "source": f"{layout}:{root}:{split}"}
    card = Path(str(source_model)).with_suffix(".json") if source_model else None
    advice = (
        f"add {CARD_KEY!r} (the list of mito_monai.transforms.source_intensity_quantiles(layout, root, split) of the "
        "source training split) to the card, or run with --target_histogram_match false"
    )
    if card is None or not card.is_file():
        raise ValueError(
            "target_histogram_match in a source-free run reads the source quantiles from the source model's card "
            f"({card if card is not None else 'no --init_checkpoint given'}), which does not exist: {advice}."
        )
    try:
        content = json.loads(card.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{card}: cannot read the source model's card ({e}).") from None
    if not isinstance(content, Mapping) or CARD_KEY not in content:
        raise ValueError(f"{card}: the source model's card has no {CARD_KEY!r}, which target_histogram_match "
                         f"needs in a source-free run: {advice}.")
    quantiles = load_reference_quantiles({QUANTILES_KEY: content[CARD_KEY]})
    return {QUANTILES_KEY: quantiles.tolist(), "source": f"{card}:{CARD_KEY}"}


def save_histogram_reference(reference: Mapping[str, Any] | None, path: str | os.PathLike) -> Path | None:
    """Write ``reference`` (as :func:`target_histogram_reference` gives it) to ``path`` as JSON, creating the
    folder; nothing (``None``) when ``reference`` is None. Returns the path written."""
    if reference is None:
        return None
    quantiles = load_reference_quantiles(reference)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {QUANTILES_KEY: quantiles.tolist(), "source": str(reference.get("source", ""))}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
