"""The switches taken from the public CAFA code: prototype alignment terms and augmentation of both domains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mito_monai.losses import PrototypeAlignmentLoss
from mito_monai.transforms import WeakStrongViewsd, strong_photometric_transform, train_transforms


def _brute_force(fs, ys, ft, tau):
    """Pixel loops over the definitions in PrototypeAlignmentLoss's docstring."""
    c = fs.shape[1]
    src = fs.permute(0, 2, 3, 1).reshape(-1, c)
    lab = ys.reshape(-1)
    unit = [v / v.norm() for v in src]
    protos = {}
    for k in (0, 1):
        members = [u for u, y in zip(unit, lab) if int(y) == k]
        if members:
            m = torch.stack(members).mean(0)
            protos[k] = m / m.norm()
    compact = sum(
        torch.stack([(1 - u @ protos[k]) ** 2 for u, y in zip(unit, lab) if int(y) == k]).mean() / 2 for k in protos
    )
    sep = (protos[0] @ protos[1]) ** 2
    tgt = [v / v.norm() for v in ft.permute(0, 2, 3, 1).reshape(-1, c)]
    vals = []
    for g in tgt:
        best = max(float(g @ p) for p in protos.values())
        if best > tau:
            vals.append((1 - best) ** 2 / 2)
    align = sum(vals) / len(vals) if vals else 0.0
    return float(compact), float(sep), float(align)


def test_prototype_alignment_matches_a_brute_force_reference():
    g = torch.Generator().manual_seed(0)
    fs = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).float()
    ys = (torch.rand(2, 1, 4, 4, generator=g) > 0.6).long()
    ft = fs.flip(-1) + 0.3 * torch.randn(2, 3, 4, 4, generator=g)
    for tau in (0.7, 0.0):
        got = PrototypeAlignmentLoss(tau=tau)(fs, ys, ft)
        want = _brute_force(fs, ys, ft, tau)
        assert [float(v) for v in got] == pytest.approx(list(want), rel=1e-5, abs=1e-7)


def test_prototype_alignment_gradients_and_degenerate_batches():
    fs = torch.randn(1, 3, 4, 4, requires_grad=True)
    ft = torch.randn(1, 3, 4, 4, requires_grad=True)
    ys = torch.zeros(1, 1, 4, 4, dtype=torch.long)  # one class only: no separation, compactness of one class
    compact, sep, align = PrototypeAlignmentLoss(tau=0.999)(fs, ys, ft)
    assert float(sep) == 0.0 and float(align) == 0.0  # nothing to separate, no target pixel that close
    (compact + sep + align).backward()
    assert fs.grad is not None and torch.isfinite(fs.grad).all()
    assert ft.grad is not None and float(ft.grad.abs().sum()) == 0.0
    # the target term moves target features only, never the prototypes
    fs2, ft2 = torch.randn(1, 3, 4, 4, requires_grad=True), torch.randn(1, 3, 4, 4, requires_grad=True)
    ys2 = (torch.arange(16).view(1, 1, 4, 4) % 2).long()
    PrototypeAlignmentLoss(tau=-1.0)(fs2, ys2, ft2)[2].backward()
    assert fs2.grad is None or float(fs2.grad.abs().sum()) == 0.0
    assert float(ft2.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="tau"):
        PrototypeAlignmentLoss(tau=1.0)
    with pytest.raises(ValueError, match="same channels"):
        PrototypeAlignmentLoss()(fs, ys, torch.randn(1, 2, 4, 4))


def test_weak_view_perturbation_is_photometric_and_independent_of_the_strong_view():
    image = torch.rand(1, 32, 32)
    views = WeakStrongViewsd(
        "image", weak_transform=strong_photometric_transform("image", prob=1.0, noise_std=0.05, max_cutout_holes=0)
    ).set_random_state(0)
    out = views({"image": image.clone()})
    assert torch.equal(out["image"], image)  # the input is left as it is
    assert not torch.equal(out["image_weak"], image)  # the weak view is perturbed ...
    assert not torch.equal(out["image_weak"], out["image_strong"])  # ... independently of the strong one
    plain = WeakStrongViewsd("image").set_random_state(0)({"image": image.clone()})
    assert torch.equal(plain["image_weak"], image)  # default: the paper's unperturbed weak view
    with pytest.raises(TypeError, match="weak_transform"):
        WeakStrongViewsd("image", weak_transform=3)


def test_source_photometric_and_rescale_keep_labels_binary_and_aligned():
    img = np.zeros((1, 64, 64), np.float32)
    img[:, 16:48, 16:48] = 1.0
    lab = (img > 0.5).astype(np.uint8)
    t = train_transforms(crop_size=(64, 64), zoom=True, photometric=strong_photometric_transform("image", prob=1.0),
                         intensity=False)
    plain = train_transforms(crop_size=(64, 64), zoom=True, intensity=False)  # the same geometry, no photometric step
    t.set_random_state(3)
    plain.set_random_state(3)  # the photometric step is last, so the geometric steps draw the same as in ``t``
    areas = set()
    for _ in range(8):
        out = t({"image": img.copy(), "label": lab.copy()})
        ref = plain({"image": img.copy(), "label": lab.copy()})
        image, label = np.asarray(out["image"]), np.asarray(out["label"])
        assert set(np.unique(label)) <= {0, 1}
        assert out["image"].shape == out["label"].shape == (1, 64, 64)
        # aligned: the label is where the geometry put the square, and the perturbed image still shows it there
        np.testing.assert_array_equal(label, np.asarray(ref["label"]))
        square = np.asarray(ref["image"]) > 0.5
        assert np.mean(square == (label > 0)) > 0.97  # only interpolated border pixels may differ
        assert not np.allclose(image, np.asarray(ref["image"]))  # the photometric step did act
        assert image[label > 0].mean() > image[label == 0].mean()  # cut-outs (mean-filled) may cover much of it
        areas.add(int(label.sum()))
    assert len(areas) > 1  # the rescale was drawn (the square's area changed)
    with pytest.raises(ValueError, match="zoom_range"):
        train_transforms(zoom=True, zoom_range=(1.2, 0.8))
