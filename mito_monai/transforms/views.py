"""Paired weak/strong views of one crop that share geometry pixel for pixel (R4MITO, docs/design.md section 3.1)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import Compose, MapTransform, Randomizable, RandGaussianNoised, RandGaussianSmoothd
from monai.utils import MAX_SEED, ensure_tuple, ensure_tuple_rep

from mito_monai.transforms.intensity import RandBrightnessContrastd, RandCoarseDropoutMeand

__all__ = ["WeakStrongViewsd", "strong_photometric_transform"]


def _pair(value: float | Sequence[float], name: str) -> tuple[float, float]:
    pair = tuple(float(v) for v in ensure_tuple(value))
    if len(pair) == 1:
        pair = (0.0, pair[0])
    if len(pair) != 2 or pair[0] < 0 or pair[1] < pair[0]:
        raise ValueError(f"{name} must be a number or a (low, high) pair with 0 <= low <= high, got {value!r}.")
    return pair  # type: ignore[return-value]


def strong_photometric_transform(
    keys: KeysCollection = "image",
    prob: float = 0.5,
    noise_std: float | Sequence[float] = (0.0, 0.2),
    blur_sigma: Sequence[float] = (0.1, 2.0),
    max_cutout_holes: int = 10,
    cutout_size: int | Sequence[int] = 32,
    brightness: float = 0.2,
    contrast: float = 0.2,
    allow_missing_keys: bool = False,
) -> Compose:
    """The strong (photometric-only) augmentation of R4MITO/CAFA, from MONAI's stock transforms.

    Applied in this order, each independently with probability ``prob``:

    1. brightness/contrast jitter (:class:`~mito_monai.transforms.RandBrightnessContrastd`);
    2. Gaussian blur, MONAI ``RandGaussianSmoothd`` with ``sigma_x``, ``sigma_y`` drawn independently from
       ``blur_sigma``;
    3. Gaussian noise, MONAI ``RandGaussianNoised`` with ``sample_std=True``: std ~ U(0, ``noise_std[1]``);
    4. cut-out: 1 to ``max_cutout_holes`` holes filled with the image mean
       (:class:`~mito_monai.transforms.RandCoarseDropoutMeand`); an int ``cutout_size`` gives squares of that side,
       a ``(min, max)`` pair gives rectangles whose sides MONAI draws independently in that range.

    Args:
        keys: image keys (never labels: nothing here is geometric).
        prob: probability of each of the four transforms.
        noise_std: maximum std, or a ``(0, max)`` pair (MONAI samples the std from U(0, max)).
        blur_sigma: ``(min, max)`` Gaussian sigma in pixels.
        max_cutout_holes: maximum number of cut-out holes (0 disables cut-out).
        cutout_size: side of the square holes, or ``(min, max)`` side range.
        brightness: half-width of the brightness shift range.
        contrast: half-width of the contrast factor range around 1.
        allow_missing_keys: don't raise if a key is missing.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}.")
    noise_low, noise_high = _pair(noise_std, "noise_std")
    if noise_low != 0.0:
        raise ValueError(
            f"noise_std must start at 0 (MONAI's RandGaussianNoise draws the std from U(0, max)), got {noise_std!r}."
        )
    sigma = _pair(blur_sigma, "blur_sigma")
    holes_ok = isinstance(max_cutout_holes, (int, np.integer)) and not isinstance(max_cutout_holes, bool)
    if not holes_ok or max_cutout_holes < 0:
        raise ValueError(f"max_cutout_holes must be a non-negative integer, got {max_cutout_holes!r}.")
    sizes = tuple(int(s) for s in ensure_tuple(cutout_size))
    if len(sizes) not in (1, 2) or min(sizes) < 1 or sizes[0] > sizes[-1]:
        raise ValueError(f"cutout_size must be a positive int or a (min, max) pair, got {cutout_size!r}.")
    transforms: list[Callable] = [
        RandBrightnessContrastd(
            keys, prob=prob, brightness=brightness, contrast=contrast, allow_missing_keys=allow_missing_keys
        ),
        RandGaussianSmoothd(keys, sigma_x=sigma, sigma_y=sigma, prob=prob, allow_missing_keys=allow_missing_keys),
        RandGaussianNoised(
            keys, prob=prob, mean=0.0, std=noise_high, sample_std=True, allow_missing_keys=allow_missing_keys
        ),
    ]
    if max_cutout_holes > 0:
        transforms.append(
            RandCoarseDropoutMeand(
                keys,
                holes=1,
                max_holes=int(max_cutout_holes),
                spatial_size=sizes[0],
                max_spatial_size=None if len(sizes) == 1 else sizes[1],
                prob=prob,
                allow_missing_keys=allow_missing_keys,
            )
        )
    return Compose(transforms)


def _copy(value: NdarrayOrTensor) -> NdarrayOrTensor:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    raise TypeError(f"expected a numpy array or a torch tensor, got {type(value).__name__}.")


class WeakStrongViewsd(Randomizable, MapTransform):
    """Add a weak and a strong view of an image that share geometry pixel for pixel.

    The incoming ``data[key]`` is already the weak view (geometric augmentation and mild intensity done upstream).
    This transform copies it to ``weak_key`` (through ``weak_transform`` when given, a mild photometric
    perturbation drawn independently of the strong one) and writes ``strong_transform`` applied to another copy to
    ``strong_key``; ``data[key]`` itself is left as is. As ``strong_transform`` must be photometric only, every pixel of
    the strong view sits where the same pixel of the weak view does.

    Randomness: ``set_random_state`` (and MONAI's dataset/worker seeding, which calls it) reseeds
    ``strong_transform`` from this transform's generator, so runs are reproducible.

    Args:
        keys: image key(s), default ``"image"``.
        strong_transform: a dictionary transform acting on ``keys`` (e.g. :func:`strong_photometric_transform`); it
            receives ``{key: copy_of_image}``. Default: ``strong_photometric_transform(keys)``.
        weak_transform: optional photometric dictionary transform of the weak view (``None``: the weak view is the
            incoming image unchanged).
        weak_key: output key of the weak view (one per key).
        strong_key: output key of the strong view (one per key).
        allow_missing_keys: don't raise if a key is missing (e.g. shared pipelines).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        strong_transform: Callable[[Mapping[Hashable, NdarrayOrTensor]], Mapping[Hashable, NdarrayOrTensor]]
        | None = None,
        weak_key: KeysCollection = "image_weak",
        strong_key: KeysCollection = "image_strong",
        allow_missing_keys: bool = False,
        weak_transform: Callable[[Mapping[Hashable, NdarrayOrTensor]], Mapping[Hashable, NdarrayOrTensor]]
        | None = None,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if weak_transform is not None and not callable(weak_transform):
            raise TypeError(f"weak_transform must be callable, got {type(weak_transform).__name__}.")
        self.weak_transform = weak_transform
        if strong_transform is None:
            strong_transform = strong_photometric_transform(self.keys, allow_missing_keys=True)
        if not callable(strong_transform):
            raise TypeError(f"strong_transform must be callable, got {type(strong_transform).__name__}.")
        self.strong_transform = strong_transform
        self.weak_keys = ensure_tuple_rep(weak_key, len(self.keys))
        self.strong_keys = ensure_tuple_rep(strong_key, len(self.keys))
        outputs = self.weak_keys + self.strong_keys
        if len(set(outputs)) != len(outputs) or set(outputs) & set(self.keys):
            raise ValueError(
                f"weak_key {self.weak_keys} and strong_key {self.strong_keys} must be distinct and differ from "
                f"keys {self.keys}."
            )

    def randomize(self, data: object | None = None) -> None:
        """Nothing to draw here: the random transforms inside ``strong_transform`` draw when they are called."""

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> WeakStrongViewsd:
        super().set_random_state(seed=seed, state=state)
        if isinstance(self.strong_transform, Randomizable):
            self.strong_transform.set_random_state(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        if isinstance(self.weak_transform, Randomizable):
            self.weak_transform.set_random_state(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, weak_key, strong_key in self.key_iterator(d, self.weak_keys, self.strong_keys):
            d[weak_key] = _copy(d[key])
            if self.weak_transform is not None:
                weak = self.weak_transform({key: d[weak_key]})
                if not isinstance(weak, Mapping) or key not in weak:
                    raise ValueError(
                        f"weak_transform must be a dictionary transform that returns key {key!r}, "
                        f"got {type(weak).__name__}."
                    )
                d[weak_key] = weak[key]
            strong = self.strong_transform({key: _copy(d[key])})
            if not isinstance(strong, Mapping) or key not in strong:
                raise ValueError(
                    f"strong_transform must be a dictionary transform that returns key {key!r}, "
                    f"got {type(strong).__name__}."
                )
            d[strong_key] = strong[key]
        return d
