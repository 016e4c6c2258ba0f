"""Tests of the semi-supervised baseline losses (Mean Teacher, CPS) in mito_monai.losses.semi_supervised."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mito_monai.losses.semi_supervised import CrossPseudoSupervisionLoss, SoftmaxConsistencyLoss

# ----------------------------------------------------------------------------------------------------------------
# references written with plain python loops


def _softmax_ref(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _ce_ref(values: list[float], label: int) -> float:
    return -math.log(_softmax_ref(values)[label])


def _argmax_ref(values: list[float]) -> int:
    return max(range(len(values)), key=lambda c: (values[c], -c))


def _cps_loop_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel CPS map (B, H, W) computed pixel by pixel in python floats (float64)."""
    bsz, ncls, height, width = a.shape
    out = torch.zeros(bsz, height, width, dtype=torch.float64)
    for n, y, x in itertools.product(range(bsz), range(height), range(width)):
        va = [float(a[n, c, y, x]) for c in range(ncls)]
        vb = [float(b[n, c, y, x]) for c in range(ncls)]
        out[n, y, x] = _ce_ref(va, _argmax_ref(vb)) + _ce_ref(vb, _argmax_ref(va))
    return out


def _mt_loop_reference(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-element squared softmax difference (B, N, H, W) computed pixel by pixel in python floats."""
    bsz, ncls, height, width = s.shape
    out = torch.zeros(bsz, ncls, height, width, dtype=torch.float64)
    for n, y, x in itertools.product(range(bsz), range(height), range(width)):
        ps = _softmax_ref([float(s[n, c, y, x]) for c in range(ncls)])
        pt = _softmax_ref([float(t[n, c, y, x]) for c in range(ncls)])
        for c in range(ncls):
            out[n, c, y, x] = (ps[c] - pt[c]) ** 2
    return out


def _untied_logits(*shape: int, seed: int) -> torch.Tensor:
    """Random logits whose per-pixel maximum is unique (so argmax is unambiguous)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen) * 2.0


# ----------------------------------------------------------------------------------------------------------------
# Cross Pseudo Supervision


def test_cps_hand_computed_1x2x1x2():
    # pixel 0: a=(2, 0) -> argmax 0, b=(0, 1) -> argmax 1;  pixel 1: a=(0, 1) -> 1, b=(3, 0) -> 0
    a = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])
    b = torch.tensor([[[[0.0, 3.0]], [[1.0, 0.0]]]])
    # CE(a, argmax b) + CE(b, argmax a) for each pixel
    p0 = math.log(1.0 + math.exp(2.0)) + math.log(1.0 + math.e)
    p1 = math.log(1.0 + math.e) + math.log(1.0 + math.exp(3.0))
    none = CrossPseudoSupervisionLoss(reduction="none")(a, b)
    assert none.shape == (1, 1, 2)
    assert torch.allclose(none, torch.tensor([[[p0, p1]]]), atol=1e-6)
    assert CrossPseudoSupervisionLoss()(a, b).item() == pytest.approx((p0 + p1) / 2, abs=1e-6)
    assert CrossPseudoSupervisionLoss(reduction="sum")(a, b).item() == pytest.approx(p0 + p1, abs=1e-6)


def test_cps_matches_loop_reference_multiclass():
    a = _untied_logits(2, 3, 2, 3, seed=0)
    b = _untied_logits(2, 3, 2, 3, seed=1)
    ref = _cps_loop_reference(a, b)
    none = CrossPseudoSupervisionLoss(reduction="none")(a, b)
    assert none.dtype == torch.float32
    assert torch.allclose(none.double(), ref, atol=1e-5)
    assert CrossPseudoSupervisionLoss()(a, b).item() == pytest.approx(ref.mean().item(), abs=1e-5)


def test_cps_equals_two_cross_entropies_with_explicit_argmax():
    a = _untied_logits(2, 4, 3, 3, seed=2)
    b = _untied_logits(2, 4, 3, 3, seed=3)
    label_a = a.argmax(dim=1)
    label_b = b.argmax(dim=1)
    expected = F.cross_entropy(a, label_b) + F.cross_entropy(b, label_a)
    assert torch.allclose(CrossPseudoSupervisionLoss()(a, b), expected, atol=1e-6)
    expected_sum = F.cross_entropy(a, label_b, reduction="sum") + F.cross_entropy(b, label_a, reduction="sum")
    assert torch.allclose(CrossPseudoSupervisionLoss(reduction="sum")(a, b), expected_sum, atol=1e-5)


def test_cps_is_not_symmetric_self_training():
    # supervising each branch with its own argmax would give a different (smaller) value
    a = _untied_logits(1, 2, 2, 2, seed=4)
    b = _untied_logits(1, 2, 2, 2, seed=5)
    own = F.cross_entropy(a, a.argmax(1)) + F.cross_entropy(b, b.argmax(1))
    assert not torch.allclose(CrossPseudoSupervisionLoss()(a, b), own)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cps_gradient_only_through_own_logits(reduction):
    a = _untied_logits(2, 3, 2, 2, seed=6).requires_grad_(True)
    b = _untied_logits(2, 3, 2, 2, seed=7).requires_grad_(True)
    loss = CrossPseudoSupervisionLoss(reduction=reduction)(a, b)
    grad_a, grad_b = torch.autograd.grad(loss, (a, b))

    ref_a = torch.autograd.grad(F.cross_entropy(a, b.detach().argmax(1), reduction=reduction), a)[0]
    ref_b = torch.autograd.grad(F.cross_entropy(b, a.detach().argmax(1), reduction=reduction), b)[0]
    assert grad_a.abs().sum() > 0 and grad_b.abs().sum() > 0
    assert torch.allclose(grad_a, ref_a, atol=1e-6)
    assert torch.allclose(grad_b, ref_b, atol=1e-6)
    # a soft (softmax) target from the other branch would add a second term to the gradient of a
    soft = F.cross_entropy(a, torch.softmax(b, 1), reduction=reduction) + F.cross_entropy(
        b, torch.softmax(a, 1), reduction=reduction
    )
    assert not torch.allclose(torch.autograd.grad(soft, a)[0], ref_a, atol=1e-4)


def test_cps_reductions_and_spatial_dims():
    for shape in [(2, 2, 5), (2, 3, 2, 3), (1, 2, 2, 2, 3)]:
        a = _untied_logits(*shape, seed=8)
        b = _untied_logits(*shape, seed=9)
        none = CrossPseudoSupervisionLoss(reduction="none")(a, b)
        assert none.shape == (shape[0], *shape[2:])
        assert torch.allclose(CrossPseudoSupervisionLoss(reduction="sum")(a, b), none.sum())
        assert torch.allclose(CrossPseudoSupervisionLoss(reduction="mean")(a, b), none.mean())


def test_cps_identical_confident_branches_small():
    # when both branches agree with a huge margin the loss goes to zero
    a = torch.tensor([[[[30.0, -30.0]], [[-30.0, 30.0]]]])
    assert CrossPseudoSupervisionLoss()(a, a.clone()).item() == pytest.approx(0.0, abs=1e-10)


def _two_class(fg_minus_bg: list[float]) -> torch.Tensor:
    """(1, 2, 1, W) logits (0, d): the foreground probability of each pixel is sigmoid(d)."""
    d = torch.tensor(fg_minus_bg, dtype=torch.float64)
    return torch.stack([torch.zeros_like(d), d]).reshape(1, 2, 1, -1)


def test_cps_hard_pixel_mining_hand_computed():
    # p_a(fg) = 3/4, 1/4, 9/10 -> argmax a = 1, 0, 1;  p_b(fg) = 1/5, 1/10, 4/5 -> argmax b = 0, 0, 1
    a = _two_class([math.log(3), -math.log(3), math.log(9)])
    b = _two_class([-math.log(4), -math.log(9), math.log(4)])
    # direction a <- argmax b: the probabilities a gives those labels are 1/4, 3/4, 9/10 (CE ln 4, ln 4/3, ln 10/9);
    # direction b <- argmax a: 1/5, 9/10, 4/5 (CE ln 5, ln 10/9, ln 5/4)
    plain = (math.log(4) + math.log(4 / 3) + math.log(10 / 9) + math.log(5) + math.log(10 / 9) + math.log(5 / 4)) / 3
    assert CrossPseudoSupervisionLoss()(a, b).item() == pytest.approx(plain, abs=1e-6)
    # threshold 0.7: each direction keeps its one pixel under 0.7 (pixel 0 both times)
    assert CrossPseudoSupervisionLoss(ohem_threshold=0.7)(a, b).item() == pytest.approx(math.log(20), abs=1e-6)
    # at least 2 kept: the threshold rises to the 2nd smallest probability (3/4 for a, 4/5 for b)
    mined = CrossPseudoSupervisionLoss(ohem_threshold=0.7, min_kept=2)(a, b).item()
    assert mined == pytest.approx((math.log(4) + math.log(4 / 3)) / 2 + (math.log(5) + math.log(5 / 4)) / 2, abs=1e-6)
    none = CrossPseudoSupervisionLoss(reduction="none", ohem_threshold=0.7, min_kept=2)(a, b)
    expected = [math.log(4) + math.log(5), math.log(4 / 3), math.log(5 / 4)]
    assert torch.allclose(none, torch.tensor([[expected]], dtype=torch.float32), atol=1e-6)
    assert CrossPseudoSupervisionLoss(reduction="sum", ohem_threshold=0.7)(a, b).item() == pytest.approx(
        math.log(20), abs=1e-6
    )
    # nothing under the threshold: 0, not NaN; threshold 1 keeps every pixel (the plain loss)
    assert CrossPseudoSupervisionLoss(ohem_threshold=0.1)(a, b).item() == 0.0
    assert CrossPseudoSupervisionLoss(ohem_threshold=1.0)(a, b).item() == pytest.approx(plain, abs=1e-6)


def test_cps_hard_pixel_mining_drops_the_gradient_of_easy_pixels():
    a = _two_class([math.log(3), -math.log(3), math.log(9)]).float().requires_grad_()
    b = _two_class([-math.log(4), -math.log(9), math.log(4)]).float().requires_grad_()
    CrossPseudoSupervisionLoss(ohem_threshold=0.7)(a, b).backward()
    assert a.grad[..., 0].abs().sum() > 0 and b.grad[..., 0].abs().sum() > 0
    assert torch.all(a.grad[..., 1:] == 0) and torch.all(b.grad[..., 1:] == 0)


@pytest.mark.parametrize("kwargs", [{"ohem_threshold": 0.0}, {"ohem_threshold": 1.5}, {"ohem_threshold": True},
                                    {"ohem_threshold": 0.7, "min_kept": -1}, {"min_kept": 5}])
def test_cps_hard_pixel_mining_arguments(kwargs):
    with pytest.raises(ValueError):
        CrossPseudoSupervisionLoss(**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Mean Teacher softmax consistency


def test_mt_hand_computed_1x2x1x2():
    s = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])
    t = torch.tensor([[[[0.0, 0.0]], [[0.0, -1.0]]]])
    # two classes: p(class 0) = 1 / (1 + exp(z1 - z0))
    ps0 = [1.0 / (1.0 + math.exp(-1.0)), 1.0 / (1.0 + math.exp(2.0))]
    pt0 = [0.5, 1.0 / (1.0 + math.exp(-1.0))]
    d = [(ps0[i] - pt0[i]) ** 2 for i in range(2)]  # class 1 has the same squared difference
    expected = torch.tensor([[[[d[0], d[1]]], [[d[0], d[1]]]]])
    none = SoftmaxConsistencyLoss(reduction="none")(s, t)
    assert none.shape == (1, 2, 1, 2)
    assert torch.allclose(none, expected, atol=1e-7)
    assert SoftmaxConsistencyLoss()(s, t).item() == pytest.approx(sum(d) / 2, abs=1e-7)
    assert SoftmaxConsistencyLoss(reduction="sum")(s, t).item() == pytest.approx(2 * sum(d), abs=1e-7)


def test_mt_matches_loop_reference_and_mse():
    s = _untied_logits(2, 3, 2, 3, seed=10)
    t = _untied_logits(2, 3, 2, 3, seed=11)
    ref = _mt_loop_reference(s, t)
    none = SoftmaxConsistencyLoss(reduction="none")(s, t)
    assert none.dtype == torch.float32
    assert torch.allclose(none.double(), ref, atol=1e-6)
    mean = SoftmaxConsistencyLoss()(s, t)
    assert mean.item() == pytest.approx(ref.mean().item(), abs=1e-7)
    assert torch.allclose(mean, F.mse_loss(torch.softmax(s, 1), torch.softmax(t, 1)))


def test_mt_zero_when_student_equals_teacher():
    s = _untied_logits(2, 3, 3, 3, seed=12)
    assert SoftmaxConsistencyLoss()(s, s.clone()).item() == 0.0
    # softmax is shift invariant along the class axis: shifted teacher logits give zero too
    assert SoftmaxConsistencyLoss()(s, s + 5.0).item() == pytest.approx(0.0, abs=1e-12)


def test_mt_gradient_only_into_student():
    s = _untied_logits(2, 3, 2, 2, seed=13).requires_grad_(True)
    t = _untied_logits(2, 3, 2, 2, seed=14).requires_grad_(True)
    loss = SoftmaxConsistencyLoss()(s, t)
    loss.backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0

    s2 = s.detach().clone().requires_grad_(True)
    ref = F.mse_loss(torch.softmax(s2, 1), torch.softmax(t.detach(), 1))
    assert torch.allclose(s.grad, torch.autograd.grad(ref, s2)[0], atol=1e-7)


def test_mt_reductions_and_spatial_dims():
    for shape in [(2, 2, 5), (2, 3, 2, 3), (1, 2, 2, 2, 3)]:
        s = _untied_logits(*shape, seed=15)
        t = _untied_logits(*shape, seed=16)
        none = SoftmaxConsistencyLoss(reduction="none")(s, t)
        assert none.shape == shape
        assert torch.allclose(SoftmaxConsistencyLoss(reduction="sum")(s, t), none.sum())
        assert torch.allclose(SoftmaxConsistencyLoss(reduction="mean")(s, t), none.mean())


# ----------------------------------------------------------------------------------------------------------------
# shared: validation and reduced precision

LOSSES = [CrossPseudoSupervisionLoss, SoftmaxConsistencyLoss]


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_invalid_shapes_raise(loss_cls):
    loss = loss_cls()
    with pytest.raises(ValueError, match=r"\(1, 2, 2, 2\).*\(1, 2, 2, 3\)"):
        loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 3))
    with pytest.raises(ValueError, match="at least 2 class channels"):
        loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="spatial"):
        loss(torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="spatial"):
        loss(torch.zeros(1, 2, 2, 2, 2, 2), torch.zeros(1, 2, 2, 2, 2, 2))
    with pytest.raises(TypeError, match="floating point"):
        loss(torch.zeros(1, 2, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        loss([[0.0]], torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="(?i)reduction"):
        loss_cls(reduction="max")


@pytest.mark.parametrize("loss_cls", LOSSES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_inputs_give_float32(loss_cls, dtype):
    a = _untied_logits(2, 3, 2, 3, seed=17)
    b = _untied_logits(2, 3, 2, 3, seed=18)
    a_low, b_low = a.to(dtype), b.to(dtype)
    out = loss_cls()(a_low, b_low)
    assert out.dtype == torch.float32
    assert torch.isfinite(out)
    # same value as the float32 computation on the (rounded) inputs
    assert torch.allclose(out, loss_cls()(a_low.float(), b_low.float()), atol=1e-6)


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_large_fp16_logits_stay_finite(loss_cls):
    # a cross-entropy of ~1.2e5 overflows float16 (max 65504); the float32 computation keeps it finite
    a = torch.tensor([[[[60000.0, -60000.0]], [[-60000.0, 60000.0]]]], dtype=torch.float16)
    b = torch.tensor([[[[-60000.0, 60000.0]], [[60000.0, -60000.0]]]], dtype=torch.float16)
    out = loss_cls(reduction="sum")(a, b)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    if loss_cls is CrossPseudoSupervisionLoss:
        assert out.item() == pytest.approx(4 * 120000.0, rel=1e-6)
    else:
        assert out.item() == pytest.approx(4.0, abs=1e-6)


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_autocast_bf16_gives_float32(loss_cls):
    a = _untied_logits(1, 2, 2, 2, seed=19).requires_grad_(True)
    b = _untied_logits(1, 2, 2, 2, seed=20)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = loss_cls()(a, b)
    except RuntimeError as err:  # pragma: no cover - depends on the torch build
        pytest.skip(f"CPU autocast with bfloat16 unavailable: {err}")
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert torch.allclose(out, loss_cls()(a, b), atol=1e-7)
    out.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
