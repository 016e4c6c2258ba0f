"""Intensity transforms for EM slices that MONAI does not ship as such.

- :class:`NormalizePerSlice` / :class:`NormalizePerSliced`: min-max to [0, 1] of every 2D slice separately.
- :class:`RandBrightnessContrast` / :class:`RandBrightnessContrastd`: ``(x - mean) * c + mean + b``, built from
  MONAI's ``ScaleIntensityFixedMean`` and ``ShiftIntensity`` with one draw of (c, b) per call.
- :class:`RandCoarseDropoutMean` / :class:`RandCoarseDropoutMeand`: MONAI's coarse dropout whose holes are filled
  with the image mean (MONAI fills with a constant, a random range, or random values within the image range).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import (
    MapTransform,
    RandCoarseDropout,
    RandCoarseDropoutd,
    RandomizableTransform,
    ScaleIntensityFixedMean,
    ShiftIntensity,
    Transform,
)
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = [
    "NormalizePerSlice",
    "NormalizePerSliced",
    "RandBrightnessContrast",
    "RandBrightnessContrastd",
    "RandCoarseDropoutMean",
    "RandCoarseDropoutMeand",
]


class NormalizePerSlice(Transform):
    """Min-max normalise every 2D slice to [0, 1] independently.

    A "slice" is the last two axes (H, W); every index of the leading axes is one slice, so this covers
    (H, W), a channel-first slice (C, H, W) (each channel separately), a raw stack (Z, H, W) (each z separately)
    and a channel-first stack (C, Z, H, W) (each (c, z) separately).
    A constant slice becomes all zeros (no division by zero, no NaN, no warning).

    Args:
        dtype: output data type (default float32); ``None`` keeps a floating input's dtype.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, dtype: DtypeLike | torch.dtype = np.float32) -> None:
        self.dtype = dtype

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """
        Args:
            img: array or tensor (numpy, torch or MetaTensor) with at least 2 dimensions, slices on the last two.
        """
        if img.ndim < 2:
            raise ValueError(f"expected an image with at least 2 dimensions (..., H, W), got shape {tuple(img.shape)}.")
        img_t = convert_to_tensor(img, track_meta=False)
        if not img_t.is_floating_point():
            img_t = img_t.to(torch.float32)
        low = torch.amin(img_t, dim=(-2, -1), keepdim=True)
        span = torch.amax(img_t, dim=(-2, -1), keepdim=True) - low
        out = (img_t - low) / torch.where(span > 0, span, torch.ones_like(span))
        dtype = self.dtype if self.dtype is not None else img_t.dtype
        img = convert_to_tensor(img, track_meta=get_track_meta()) if isinstance(img, torch.Tensor) else img
        return convert_to_dst_type(out, dst=img, dtype=dtype)[0]


class NormalizePerSliced(MapTransform):
    """Dictionary-based :class:`NormalizePerSlice`.

    Args:
        keys: keys of the images to normalise (not labels).
        dtype: output data type, default float32.
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = NormalizePerSlice.backend

    def __init__(
        self, keys: KeysCollection, dtype: DtypeLike | torch.dtype = np.float32, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = NormalizePerSlice(dtype=dtype)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d


def _check_nonnegative(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}.")
    return float(value)


class RandBrightnessContrast(RandomizableTransform):
    """Random brightness and contrast: ``x -> (x - mean) * c + mean + b``.

    ``c ~ U(1 - contrast, 1 + contrast)`` and ``b ~ U(-brightness, brightness)``, drawn once per call; ``mean`` is the
    mean of the whole image (all channels). Implemented with MONAI's ``ScaleIntensityFixedMean`` (factor ``c - 1``)
    followed by ``ShiftIntensity`` (offset ``b``).

    Args:
        prob: probability of applying the transform.
        brightness: half-width of the additive shift range.
        contrast: half-width of the contrast-factor range around 1.
        dtype: output data type, default float32.
    """

    backend = ScaleIntensityFixedMean.backend

    def __init__(
        self, prob: float = 0.1, brightness: float = 0.1, contrast: float = 0.1, dtype: DtypeLike = np.float32
    ) -> None:
        super().__init__(prob)
        self.brightness = _check_nonnegative(brightness, "brightness")
        self.contrast = _check_nonnegative(contrast, "contrast")
        self.dtype = dtype
        self.contrast_factor = 1.0
        self.offset = 0.0

    def randomize(self, data: object | None = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        self.contrast_factor = float(self.R.uniform(1.0 - self.contrast, 1.0 + self.contrast))
        self.offset = float(self.R.uniform(-self.brightness, self.brightness))

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """
        Args:
            img: channel-first image.
            randomize: draw new (c, b); ``False`` reuses the last draw.
        """
        img = convert_to_tensor(img, track_meta=get_track_meta())
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        out = ScaleIntensityFixedMean(factor=self.contrast_factor - 1.0, dtype=self.dtype)(img)
        return ShiftIntensity(offset=self.offset)(out)


class RandBrightnessContrastd(RandomizableTransform, MapTransform):
    """Dictionary-based :class:`RandBrightnessContrast`; all ``keys`` get the same (c, b) draw (each its own mean).

    Args:
        keys: keys of the images to transform.
        prob: probability of applying the transform.
        brightness: half-width of the additive shift range.
        contrast: half-width of the contrast-factor range around 1.
        dtype: output data type, default float32.
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = RandBrightnessContrast.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        brightness: float = 0.1,
        contrast: float = 0.1,
        dtype: DtypeLike = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.jitter = RandBrightnessContrast(prob=1.0, brightness=brightness, contrast=contrast, dtype=dtype)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandBrightnessContrastd:
        super().set_random_state(seed, state)
        self.jitter.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            for key in self.key_iterator(d):
                d[key] = convert_to_tensor(d[key], track_meta=get_track_meta())
            return d
        self.jitter.randomize()
        for key in self.key_iterator(d):
            d[key] = self.jitter(d[key], randomize=False)
        return d


class RandCoarseDropoutMean(RandCoarseDropout):
    """MONAI's :class:`~monai.transforms.RandCoarseDropout` with the holes filled with the image mean.

    The mean is taken over the whole input image (all channels) before the holes are cut. Arguments as
    ``RandCoarseDropout`` without ``fill_value``/``dropout_holes``: ``holes`` (minimum number), ``spatial_size``
    (minimum size), ``max_holes``, ``max_spatial_size``, ``prob``.
    """

    def __init__(
        self,
        holes: int,
        spatial_size: Sequence[int] | int,
        max_holes: int | None = None,
        max_spatial_size: Sequence[int] | int | None = None,
        prob: float = 0.1,
    ) -> None:
        super().__init__(
            holes=holes,
            spatial_size=spatial_size,
            dropout_holes=True,
            fill_value=0.0,
            max_holes=max_holes,
            max_spatial_size=max_spatial_size,
            prob=prob,
        )

    def _transform_holes(self, img: np.ndarray) -> np.ndarray:
        self.fill_value = float(img.mean())
        return super()._transform_holes(img)


class RandCoarseDropoutMeand(RandCoarseDropoutd):
    """Dictionary-based :class:`RandCoarseDropoutMean`: all ``keys`` share the holes, each is filled with its own mean.

    Args:
        keys: keys of the images to transform.
        holes: number of holes, the minimum when ``max_holes`` is given.
        spatial_size: size of the holes, the minimum when ``max_spatial_size`` is given (MONAI then draws every
            side independently, so holes are rectangles).
        max_holes: maximum number of holes.
        max_spatial_size: maximum size of the holes.
        prob: probability of applying the transform.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        holes: int,
        spatial_size: Sequence[int] | int,
        max_holes: int | None = None,
        max_spatial_size: Sequence[int] | int | None = None,
        prob: float = 0.1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(
            keys=keys,
            holes=holes,
            spatial_size=spatial_size,
            max_holes=max_holes,
            max_spatial_size=max_spatial_size,
            prob=prob,
            allow_missing_keys=allow_missing_keys,
        )
        self.dropper = RandCoarseDropoutMean(
            holes=holes, spatial_size=spatial_size, max_holes=max_holes, max_spatial_size=max_spatial_size, prob=1.0
        )
