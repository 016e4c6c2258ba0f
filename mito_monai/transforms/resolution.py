"""In-plane rescaling of EM slices to another pixel size, built on MONAI's ``Resize``.

A network trained on images of one pixel size sees mitochondria at the wrong scale on images of another. Rescaling
a slice by ``scale = pixel_size / wanted_pixel_size`` (e.g. 5 nm / 4.6 nm = 1.087 to show Lucchi++ slices to a
model trained on VNC III) gives it the wanted pixel size.

- :func:`scaled_size`: the spatial size of a rescaled slice (``round(n * scale)``, at least 1);
- :func:`resize_slices`: resize the last two axes of a tensor to a given size (images: area averaging when
  shrinking, which is anti-aliased, bilinear when enlarging; labels: nearest neighbour);
- :class:`RescaleToPixelSize` / :class:`RescaleToPixelSized`: the MONAI-style array and dictionary transforms.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Resize, Transform
from monai.utils import TransformBackends, convert_to_tensor, ensure_tuple_rep

__all__ = ["RescaleToPixelSize", "RescaleToPixelSized", "check_scale", "resize_slices", "scaled_size"]


def check_scale(scale: float | None) -> float | None:
    """``scale`` as a float (``None`` stays ``None``); ValueError unless it is a finite number > 0."""
    if scale is None:
        return None
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale must be a positive number (or None), got {scale!r}.") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"scale must be a positive number (or None), got {scale!r}.")
    return value


def scaled_size(size: Sequence[int], scale: float) -> tuple[int, ...]:
    """The size of every spatial axis of ``size`` times ``scale``, rounded, at least 1."""
    scale = check_scale(scale)
    return tuple(max(1, int(round(int(n) * scale))) for n in size)


def resize_slices(img: NdarrayOrTensor, size: Sequence[int], label: bool = False) -> torch.Tensor:
    """``img`` (..., H, W) resized on its last two axes to ``size`` (h, w), as a float32 tensor (..., h, w).

    Images are resized by area averaging on axes that shrink (``mode="area"``: every output pixel is the mean
    of the input area it covers, so nothing aliases) and bilinearly (``align_corners=False``) otherwise; labels
    (``label=True``) by nearest neighbour (``"nearest-exact"``: pixel centres map to pixel centres), so they keep
    their values. The leading axes (channels, batch) are resized alike, each separately. The same size returns the
    input values unchanged.

    Args:
        img: array or tensor with at least 2 dimensions; (C, H, W) and (B, C, H, W) are typical.
        size: (h, w), the output's last two axes.
        label: nearest-neighbour resizing for label maps.
    """
    size = tuple(int(s) for s in ensure_tuple_rep(size, 2))
    if min(size) < 1:
        raise ValueError(f"size must be two positive sizes (h, w), got {size}.")
    x = convert_to_tensor(img, track_meta=False)
    if x.ndim < 2:
        raise ValueError(f"expected at least 2 dimensions (..., H, W), got shape {tuple(x.shape)}.")
    lead, spatial = x.shape[:-2], tuple(x.shape[-2:])
    if spatial == size:
        return x.float()
    if label:
        mode = "nearest-exact"
    else:
        mode = "area" if all(s <= n for s, n in zip(size, spatial)) else "bilinear"
    # MONAI's Resize takes one channel-first image: the leading axes become its channels
    flat = x.reshape(-1, *spatial).float()
    resize = Resize(size, mode=mode, align_corners=False if mode == "bilinear" else None)
    out = convert_to_tensor(resize(flat), track_meta=False)
    return out.reshape(*lead, *size)


class RescaleToPixelSize(Transform):
    """Rescale a channel-first slice (C, H, W) in-plane by ``scale`` = its pixel size / the wanted pixel size.

    The output is (C, round(H * scale), round(W * scale)) float32 (see :func:`resize_slices` for the
    interpolation: area averaging when shrinking, bilinear when enlarging, nearest neighbour for labels).
    ``scale`` ``None`` or 1 returns the input unchanged. A MetaTensor's metadata is kept (its affine is not
    updated: the slices here carry no physical affine).

    Args:
        scale: pixel size of the input / wanted pixel size (> 0), e.g. target 5.0 nm / source 4.6 nm = 1.087;
            ``None``: no rescaling.
        label: nearest-neighbour resizing (label maps stay binary).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, scale: float | None, label: bool = False) -> None:
        self.scale = check_scale(scale)
        self.label = bool(label)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """
        Args:
            img: (C, H, W) array or tensor.
        """
        if self.scale is None or self.scale == 1.0:
            return img
        if img.ndim != 3:
            raise ValueError(f"expected a channel-first slice (C, H, W), got shape {tuple(img.shape)}.")
        out = resize_slices(img, scaled_size(img.shape[-2:], self.scale), label=self.label)
        if isinstance(img, MetaTensor):
            out = MetaTensor(out, meta=dict(img.meta))
        return out


class RescaleToPixelSized(MapTransform):
    """Dictionary version of :class:`RescaleToPixelSize`: ``keys[0]`` is the image, the other keys are labels
    (nearest neighbour). Missing keys are skipped with ``allow_missing_keys`` (e.g. unlabelled target data).

    Args:
        keys: image key followed by label keys.
        scale: pixel size of the data / wanted pixel size; ``None``: no rescaling.
        allow_missing_keys: skip keys absent from a sample.
    """

    backend = RescaleToPixelSize.backend

    def __init__(self, keys: KeysCollection, scale: float | None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image = RescaleToPixelSize(scale)
        self.label = RescaleToPixelSize(scale, label=True)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = (self.label if key != self.keys[0] else self.image)(d[key])
        return d
