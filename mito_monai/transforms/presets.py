"""Transform pipelines that the bundle configs call by name (``_target_``), built from MONAI's stock transforms."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureTyped,
    Rand2DElasticd,
    RandFlipd,
    RandRotate90d,
    RandSpatialCropd,
    RandZoomd,
    SpatialPadd,
)
from monai.utils import ensure_tuple

from mito_monai.transforms.histogram import MatchHistogramd
from mito_monai.transforms.intensity import NormalizePerSliced, RandBrightnessContrastd
from mito_monai.transforms.resolution import RescaleToPixelSized
from mito_monai.transforms.views import WeakStrongViewsd

__all__ = ["eval_transforms", "train_transforms"]


def _split_keys(keys: KeysCollection) -> tuple[str, tuple]:
    keys = ensure_tuple(keys)
    if len(keys) == 0:
        raise ValueError("keys must name at least the image key.")
    return keys[0], tuple(keys)


def _normalization(image_key: str, histogram_reference: Any) -> list[Callable]:
    """Per-slice min-max normalisation of the image, then histogram matching to ``histogram_reference``."""
    steps: list[Callable] = [NormalizePerSliced(image_key)]
    if histogram_reference is not None:
        steps.append(MatchHistogramd(image_key, histogram_reference))
    return steps


def train_transforms(
    keys: KeysCollection = ("image", "label"),
    crop_size: Sequence[int] | int = (256, 256),
    elastic: bool = False,
    intensity: bool = True,
    paired_views: bool = False,
    strong_transform: Callable | None = None,
    elastic_spacing: Sequence[float] | float = (32.0, 32.0),
    elastic_magnitude: Sequence[float] = (1.0, 3.0),
    elastic_prob: float = 0.5,
    zoom: bool = False,
    zoom_range: Sequence[float] = (0.8, 1.2),
    photometric: Callable | None = None,
    weak_transform: Callable | None = None,
    rescale: float | None = None,
    histogram_reference: Any = None,
) -> Compose:
    """Training pipeline for 2D slice samples ``{"image": (1, H, W), "label": (1, H, W)}``.

    ``keys[0]`` is the image, the other keys are labels (nearest-neighbour everywhere; they may be absent, e.g. for
    unlabelled target data). Steps:

    1. :class:`NormalizePerSliced` on the image (min-max to [0, 1]), then, with ``histogram_reference``,
       :class:`MatchHistogramd` on the whole slice (before any crop); with ``rescale``,
       :class:`~mito_monai.transforms.RescaleToPixelSized` on the whole slice (image and labels, before any crop);
    2. ``SpatialPadd`` (reflect) to at least ``crop_size``;
    3. ``RandSpatialCropd(crop_size, random_size=False)``;
    4. ``RandFlipd`` on each spatial axis (p = 0.5 each) and ``RandRotate90d`` (p = 0.75, k in {1, 2, 3}, so the four
       rotations are equally likely);
    5. if ``elastic``: ``Rand2DElasticd`` (image bilinear, labels nearest, reflection padding);
    6. if ``zoom``: ``RandZoomd`` (p = 0.5, factor in ``zoom_range``, the crop size kept; image bilinear,
       labels nearest): the rescale augmentation of the CAFA code;
    7. if ``intensity``: mild brightness/contrast on the image (p = 0.5, +-0.1 each);
    8. ``EnsureTyped``;
    9. if ``photometric``: that dictionary transform on the image (e.g. the strong photometric augmentation
       :func:`~mito_monai.transforms.strong_photometric_transform` on labelled source crops, as the CAFA code
       augments the source strongly too);
    10. if ``paired_views``: :class:`WeakStrongViewsd` adds ``image_weak`` (the image, or ``weak_transform`` of
        it) and ``image_strong``.

    Args:
        keys: image key followed by label keys.
        crop_size: (H, W) of the random crop.
        elastic: add the elastic deformation.
        intensity: add the mild intensity jitter.
        paired_views: end with :class:`WeakStrongViewsd` on the image.
        strong_transform: strong view transform for ``paired_views`` (default
            :func:`~mito_monai.transforms.strong_photometric_transform` on the image key).
        elastic_spacing: control-point spacing of the elastic grid, pixels.
        elastic_magnitude: range of the control-point displacement magnitude.
        elastic_prob: probability of the elastic deformation.
        zoom: add the random rescale.
        zoom_range: (min, max) zoom factor.
        photometric: a dictionary transform applied to the image after the geometric steps.
        weak_transform: for ``paired_views``, a photometric perturbation of the weak view (the CAFA code perturbs
            the weak view mildly and the strong view more); ``None`` keeps the weak view unperturbed.
        rescale: in-plane factor of the whole slices, the data's pixel size / the pixel size the network should
            see (e.g. target / source pixel size); ``None`` (default) or 1: no rescaling.
        histogram_reference: reference quantiles of normalised images (anything :class:`MatchHistogram` takes:
            a list, an array, ``{"intensity_quantiles": [...]}`` or a JSON file path); ``None`` (default): no
            histogram matching.
    """
    image_key, all_keys = _split_keys(keys)
    crop = ensure_tuple(crop_size)
    crop = crop * 2 if len(crop) == 1 else crop
    if len(crop) != 2 or any(int(c) != c or c < 1 for c in crop):
        raise ValueError(f"crop_size must be a positive int or an (H, W) pair of positive ints, got {crop_size!r}.")
    crop = tuple(int(c) for c in crop)
    transforms: list[Callable] = [
        *_normalization(image_key, histogram_reference),
        RescaleToPixelSized(all_keys, scale=rescale, allow_missing_keys=True),
        SpatialPadd(all_keys, spatial_size=crop, mode="reflect", allow_missing_keys=True),
        RandSpatialCropd(all_keys, roi_size=crop, random_size=False, allow_missing_keys=True),
        RandFlipd(all_keys, prob=0.5, spatial_axis=0, allow_missing_keys=True),
        RandFlipd(all_keys, prob=0.5, spatial_axis=1, allow_missing_keys=True),
        RandRotate90d(all_keys, prob=0.75, max_k=3, spatial_axes=(0, 1), allow_missing_keys=True),
    ]
    if elastic:
        transforms.append(
            Rand2DElasticd(
                all_keys,
                spacing=elastic_spacing,
                magnitude_range=tuple(elastic_magnitude),
                prob=elastic_prob,
                mode=["bilinear"] + ["nearest"] * (len(all_keys) - 1),
                padding_mode="reflection",
                allow_missing_keys=True,
            )
        )
    if zoom:
        low, high = (float(z) for z in zoom_range)
        if not 0 < low <= high:
            raise ValueError(f"zoom_range must be (min, max) with 0 < min <= max, got {zoom_range!r}.")
        transforms.append(
            RandZoomd(
                all_keys, prob=0.5, min_zoom=low, max_zoom=high, keep_size=True,
                mode=["bilinear"] + ["nearest"] * (len(all_keys) - 1), padding_mode="reflect",
                allow_missing_keys=True,
            )
        )
    if intensity:
        transforms.append(RandBrightnessContrastd(image_key, prob=0.5, brightness=0.1, contrast=0.1))
    transforms.append(EnsureTyped(all_keys, allow_missing_keys=True))
    if photometric is not None:
        transforms.append(photometric)
    if paired_views:
        transforms.append(WeakStrongViewsd(image_key, strong_transform=strong_transform, weak_transform=weak_transform))
    return Compose(transforms)


def eval_transforms(keys: KeysCollection = ("image", "label"), histogram_reference: Any = None) -> Compose:
    """Evaluation pipeline: :class:`NormalizePerSliced` on ``keys[0]`` (the image), with ``histogram_reference``
    (as :func:`train_transforms`; default ``None``: none) :class:`MatchHistogramd` on it, then ``EnsureTyped`` on all
    keys (labels may be absent)."""
    image_key, all_keys = _split_keys(keys)
    return Compose([*_normalization(image_key, histogram_reference), EnsureTyped(all_keys, allow_missing_keys=True)])
