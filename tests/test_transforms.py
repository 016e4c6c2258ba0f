"""Tests of mito_monai.transforms: alignment of image and label, normalisation, paired views, cut-out fill."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, RandGaussianNoised
from scipy import ndimage

from mito_monai.transforms import (
    NormalizePerSlice,
    NormalizePerSliced,
    RandBrightnessContrast,
    RandBrightnessContrastd,
    RandCoarseDropoutMeand,
    WeakStrongViewsd,
    eval_transforms,
    strong_photometric_transform,
    train_transforms,
)


def _sample(shape=(30, 36), seed: int = 0, ramp: float = 0.2) -> dict:
    """A label of random blobs and an image that encodes it: image = label + ramp * (a spatial ramp in [0, 1])."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=3)
    label = (field > np.median(field)).astype(np.float32)[None]
    yy, xx = np.meshgrid(np.linspace(0, 1, shape[0]), np.linspace(0, 1, shape[1]), indexing="ij")
    image = (label + ramp * (0.3 * yy + 0.7 * xx)[None]).astype(np.float32)
    return {"image": image, "label": label}


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ---------------------------------------------------------------------------------------------------------------------
# NormalizePerSlice


def test_normalize_per_slice_values_by_hand():
    img = np.array([[[2.0, 4.0], [6.0, 10.0]]], dtype=np.float32)  # (C=1, H, W)
    np.testing.assert_allclose(NormalizePerSlice()(img), [[[0.0, 0.25], [0.5, 1.0]]])
    # (Z, H, W) stack with a constant slice: each slice normalised on its own, the constant one becomes 0
    stack = np.stack([img[0], np.full((2, 2), 7.0), img[0] * -1]).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = NormalizePerSlice()(stack)
    expected = np.array([[[0, 0.25], [0.5, 1]], [[0, 0], [0, 0]], [[1, 0.75], [0.5, 0]]])
    np.testing.assert_allclose(out, expected)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    # (C, Z, H, W): the constant slice inside the second channel's volume is zeros, other slices independent
    vol = np.stack([stack, stack[::-1] * 3 + 1])
    np.testing.assert_allclose(NormalizePerSlice()(vol), np.stack([expected, expected[::-1]]), atol=1e-7)


def test_normalize_per_slice_torch_and_integer_inputs():
    data = torch.tensor([[[0, 50], [100, 200]], [[3, 3], [3, 3]]], dtype=torch.uint8)
    meta = MetaTensor(data, meta={"filename_or_obj": "stack.tif"})
    out = NormalizePerSlice()(meta)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    assert out.meta["filename_or_obj"] == "stack.tif"
    np.testing.assert_allclose(out.numpy(), [[[0, 0.25], [0.5, 1]], [[0, 0], [0, 0]]])
    d = NormalizePerSliced("image", allow_missing_keys=True)({"image": data.clone(), "label": data.clone()})
    np.testing.assert_allclose(_np(d["image"]), out.numpy())
    assert torch.equal(d["label"], data)  # labels untouched
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        NormalizePerSlice()(np.zeros(4))


# ---------------------------------------------------------------------------------------------------------------------
# RandBrightnessContrast


def test_rand_brightness_contrast_formula_and_shared_draw():
    rng = np.random.default_rng(1)
    data = {"a": rng.random((1, 8, 9)).astype(np.float32), "b": rng.random((1, 8, 9)).astype(np.float32) + 2}
    t = RandBrightnessContrastd(["a", "b"], prob=1.0, brightness=0.3, contrast=0.4)
    t.set_random_state(3)
    out = t(data)
    c, b = t.jitter.contrast_factor, t.jitter.offset
    assert 0.6 <= c <= 1.4 and -0.3 <= b <= 0.3 and (c != 1.0 or b != 0.0)
    for key in ("a", "b"):  # one draw for all keys, each around its own mean
        x = data[key]
        np.testing.assert_allclose(_np(out[key]), (x - x.mean()) * c + x.mean() + b, atol=1e-6)
    # prob 0: identity
    same = RandBrightnessContrastd("a", prob=0.0)(data)
    np.testing.assert_array_equal(_np(same["a"]), data["a"])
    with pytest.raises(ValueError, match="brightness"):
        RandBrightnessContrast(brightness=-1)


# ---------------------------------------------------------------------------------------------------------------------
# cut-out filled with the mean


def test_coarse_dropout_fills_with_the_mean():
    rng = np.random.default_rng(2)
    data = {
        "image": rng.random((1, 20, 24)).astype(np.float32) + 1,
        "other": rng.random((1, 20, 24)).astype(np.float32),
    }
    t = RandCoarseDropoutMeand(["image", "other"], holes=2, max_holes=3, spatial_size=4, prob=1.0)
    for seed in range(5):
        t.set_random_state(seed)
        out = t({k: v.copy() for k, v in data.items()})
        masks = []
        for key in ("image", "other"):
            changed = _np(out[key]) != data[key]
            assert 16 <= changed.sum() <= 3 * 16  # 2 or 3 squares of 4 x 4 (they may overlap)
            np.testing.assert_allclose(_np(out[key])[changed], data[key].mean(), rtol=1e-6)
            masks.append(changed)
        np.testing.assert_array_equal(masks[0], masks[1])  # the keys share the holes


# ---------------------------------------------------------------------------------------------------------------------
# training / evaluation pipelines: alignment


@pytest.mark.parametrize("shape", [(30, 36), (14, 20)])  # larger than the crop, and smaller (reflect padding)
def test_train_transforms_keep_image_and_label_aligned(shape):
    sample = _sample(shape)
    pipeline = train_transforms(crop_size=(24, 24), elastic=False, intensity=True)
    outputs = []
    for seed in range(20):
        pipeline.set_random_state(seed)
        out = pipeline({k: v.copy() for k, v in sample.items()})
        image, label = _np(out["image"]), _np(out["label"])
        assert image.shape == label.shape == (1, 24, 24)
        assert set(np.unique(label)) <= {0.0, 1.0}
        np.testing.assert_array_equal(label, (image > 0.5).astype(np.float32))
        outputs.append(label.tobytes())
    assert len(set(outputs)) >= 5  # the crops/flips/rotations do vary (8 dihedral variants when only padded)


def test_train_transforms_elastic_keeps_alignment_up_to_boundaries():
    sample = _sample((40, 40), seed=3)
    pipeline = train_transforms(crop_size=(32, 32), elastic=True, elastic_prob=1.0, intensity=False)
    for seed in range(10):
        pipeline.set_random_state(seed)
        out = pipeline({k: v.copy() for k, v in sample.items()})
        image, label = _np(out["image"])[0], _np(out["label"])[0]
        assert set(np.unique(label)) <= {0.0, 1.0}  # nearest interpolation for the label
        # the image is resampled (bilinear), not just permuted
        assert not np.isin(image, NormalizePerSlice()(sample["image"])).all()
        mismatch = label != (image > 0.5)
        near_boundary = ndimage.maximum_filter(label, size=5) != ndimage.minimum_filter(label, size=5)
        assert not (mismatch & ~near_boundary).any()
        assert mismatch.mean() < 0.05


def test_pipelines_without_label():
    image = _sample((30, 30))["image"]
    out = train_transforms(crop_size=(16, 16), elastic=True, paired_views=True)({"image": image})
    assert set(out) == {"image", "image_weak", "image_strong"}
    assert all(tuple(v.shape) == (1, 16, 16) for v in out.values())
    out = eval_transforms()({"image": image * 5 + 3})
    assert set(out) == {"image"}
    assert isinstance(out["image"], torch.Tensor)
    np.testing.assert_allclose(out["image"].numpy(), NormalizePerSlice()(image), atol=1e-6)
    labelled = eval_transforms()({"image": image, "label": _sample((30, 30))["label"]})
    np.testing.assert_array_equal(labelled["label"].numpy(), _sample((30, 30))["label"])


# ---------------------------------------------------------------------------------------------------------------------
# WeakStrongViewsd


def _affine_residual(weak: np.ndarray, strong: np.ndarray) -> float:
    design = np.stack([weak.ravel(), np.ones(weak.size)], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, strong.ravel().astype(np.float64), rcond=None)
    return float(np.abs(design @ coef - strong.ravel()).max())


def test_weak_strong_views_share_geometry():
    # with a brightness/contrast-only strong transform the strong view is an affine function of the weak view
    strong = RandBrightnessContrastd("image", prob=1.0, brightness=0.3, contrast=0.3)
    pipeline = train_transforms(crop_size=(24, 24), paired_views=True, strong_transform=strong)
    sample = _sample((30, 36))
    for seed in range(5):
        pipeline.set_random_state(seed)
        out = pipeline({k: v.copy() for k, v in sample.items()})
        weak, strong_view = _np(out["image_weak"]), _np(out["image_strong"])
        np.testing.assert_array_equal(weak, _np(out["image"]))
        np.testing.assert_array_equal(_np(out["label"]), (weak > 0.5).astype(np.float32))
        assert not np.allclose(weak, strong_view)
        assert _affine_residual(weak, strong_view) < 1e-5


def test_weak_strong_views_deterministic_and_strong_differs():
    image = torch.as_tensor(_sample((32, 32))["image"])
    views = [WeakStrongViewsd("image").set_random_state(7) for _ in range(2)]
    first, second = views[0]({"image": image}), views[1]({"image": image})
    torch.testing.assert_close(first["image_strong"], second["image_strong"])
    torch.testing.assert_close(first["image_weak"], image)
    torch.testing.assert_close(first["image"], image)  # the input is not modified in place (cut-out works in place)
    # the seed reaches the inner transforms through Compose.set_random_state too
    a = Compose([WeakStrongViewsd("image")]).set_random_state(11)({"image": image})
    b = Compose([WeakStrongViewsd("image")]).set_random_state(11)({"image": image})
    torch.testing.assert_close(a["image_strong"], b["image_strong"])
    strong_views = [views[0]({"image": image})["image_strong"] for _ in range(6)]
    assert sum(not torch.allclose(s, image) for s in strong_views) >= 3  # 4 transforms at p = 0.5 each
    assert len({s.numpy().tobytes() for s in strong_views}) >= 3


def test_weak_strong_views_validation():
    with pytest.raises(ValueError, match="distinct"):
        WeakStrongViewsd("image", weak_key="image")
    with pytest.raises(TypeError, match="callable"):
        WeakStrongViewsd("image", strong_transform=3)
    broken = WeakStrongViewsd("image", strong_transform=lambda d: d["image"])
    with pytest.raises(ValueError, match="dictionary transform"):
        broken({"image": np.zeros((1, 4, 4), dtype=np.float32)})


def test_strong_photometric_transform_settings():
    compose = strong_photometric_transform("image", prob=0.5, noise_std=(0.0, 0.2), blur_sigma=(0.1, 2.0))
    names = [type(t).__name__ for t in compose.transforms]
    assert names == ["RandBrightnessContrastd", "RandGaussianSmoothd", "RandGaussianNoised", "RandCoarseDropoutMeand"]
    assert all(t.prob == 0.5 for t in compose.transforms)
    noise = compose.transforms[2]
    assert isinstance(noise, RandGaussianNoised)
    assert noise.rand_gaussian_noise.std == 0.2 and noise.rand_gaussian_noise.sample_std
    assert compose.transforms[1].rand_smooth.sigma_x == (0.1, 2.0)
    dropper = compose.transforms[3].dropper
    assert (dropper.holes, dropper.max_holes, dropper.spatial_size, dropper.max_spatial_size) == (1, 10, 32, None)
    assert len(strong_photometric_transform(max_cutout_holes=0).transforms) == 3
    with pytest.raises(ValueError, match="noise_std"):
        strong_photometric_transform(noise_std=(0.1, 0.2))
    with pytest.raises(ValueError, match="cutout_size"):
        strong_photometric_transform(cutout_size=(8, 4))


def test_weak_strong_views_do_not_leak_in_place_changes():
    # MONAI's coarse dropout writes into its input; the weak view and the input must stay untouched
    image = torch.as_tensor(_sample((16, 16))["image"])
    original = image.clone()
    dropout = RandCoarseDropoutMeand("image", holes=2, spatial_size=4, prob=1.0)
    views = WeakStrongViewsd("image", strong_transform=dropout)
    out = views({"image": image})
    torch.testing.assert_close(out["image"], original)
    torch.testing.assert_close(out["image_weak"], original)
    changed = (out["image_strong"] != original).numpy()
    assert changed.sum() >= 16
    np.testing.assert_allclose(out["image_strong"].numpy()[changed], original.mean().item(), rtol=1e-6)
