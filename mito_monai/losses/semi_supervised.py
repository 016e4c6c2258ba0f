"""Unsupervised terms of the semi-supervised baselines DualRel compares against (Mean Teacher and CPS)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from ._utils import check_feature_pair, no_autocast, reduce_loss

__all__ = ["CrossPseudoSupervisionLoss", "SoftmaxConsistencyLoss"]


def _check_logits_pair(first: torch.Tensor, second: torch.Tensor, names: tuple[str, str]) -> None:
    """Both tensors are floating (B, N, *spatial) logits of the same shape with N >= 2 classes."""
    check_feature_pair(first, second, names=names)
    if first.shape[1] < 2:
        raise ValueError(
            f"expected logits with at least 2 class channels, got {names[0]} {tuple(first.shape)} "
            f"and {names[1]} {tuple(second.shape)}."
        )


def _hard_pixel_mask(probabilities: torch.Tensor, threshold: float, min_kept: int) -> torch.Tensor:
    """Online hard example mining: which pixels a pseudo-label cross-entropy keeps.

    ``probabilities`` holds each pixel's predicted probability of its own pseudo-label (any shape). A pixel is
    kept when that probability is at most ``threshold``; when fewer than ``min_kept`` pixels are that hard,
    the threshold rises to the ``min_kept``-th smallest probability, so that (up to ties) the ``min_kept``
    hardest pixels of the batch are kept.
    """
    flat = probabilities.reshape(-1)
    limit = torch.as_tensor(threshold, dtype=flat.dtype, device=flat.device)
    if min_kept > 0:
        kth = torch.kthvalue(flat, min(min_kept, flat.numel())).values
        limit = torch.maximum(limit, kth)
    return probabilities <= limit


class CrossPseudoSupervisionLoss(_Loss):
    """
    Cross Pseudo Supervision (CPS) between two segmentation branches:
    ``CE(logits_a, argmax logits_b) + CE(logits_b, argmax logits_a)``.

    Each branch is supervised by the other branch's hard pseudo-label (argmax over the class axis, no
    gradient), so a branch is trained only through its own logits. The per-pixel loss is the sum of the
    two cross-entropy maps.

    Optional hard-pixel mining (``ohem_threshold``): the online hard example mining cross-entropy that the
    CPS authors' public code uses for its Cityscapes experiments (threshold 0.7, a minimum number of kept
    pixels), applied here to each pseudo-label direction. A pixel of direction ``a <- b`` counts only when
    branch ``a`` gives the pseudo-label ``argmax b`` a probability of at most ``ohem_threshold`` (or it is
    among the ``min_kept`` hardest pixels of the batch), and each direction's cross-entropy is averaged
    over its kept pixels only. Pixels both branches already agree on with confidence (at 93 % background,
    nearly all of them background) then stop pulling the branches towards the majority class, which is
    what makes plain CPS collapse to background from scratch on EM stacks.

    Reference:
        X. Chen, Y. Yuan, G. Zeng, J. Wang, "Semi-Supervised Semantic Segmentation with Cross Pseudo
        Supervision", CVPR 2021.

    Args:
        reduction: {``"mean"``, ``"sum"``, ``"none"``}. ``"mean"`` averages the per-pixel sum of the two
            cross-entropies over the batch and all pixels (with ``ohem_threshold``: each direction's mean
            over its kept pixels, summed; 0 for a direction that keeps none); ``"sum"`` sums it; ``"none"``
            returns the (B, *spatial) per-pixel map (dropped pixels contribute 0).
        ohem_threshold: ``None`` (default, the CPS paper's plain cross-entropy) or a probability in (0, 1]:
            the hard-pixel threshold.
        min_kept: with ``ohem_threshold``, the minimum number of pixels (of the whole batch) each direction
            keeps; 0 keeps only those under the threshold.
    """

    def __init__(
        self,
        reduction: LossReduction | str = LossReduction.MEAN,
        ohem_threshold: float | None = None,
        min_kept: int = 0,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if ohem_threshold is not None and (
            isinstance(ohem_threshold, bool) or not isinstance(ohem_threshold, (int, float)) or not 0 < ohem_threshold <= 1
        ):
            raise ValueError(f"ohem_threshold must be None or a probability in (0, 1], got {ohem_threshold!r}.")
        if isinstance(min_kept, bool) or not isinstance(min_kept, int) or min_kept < 0:
            raise ValueError(f"min_kept must be an integer >= 0, got {min_kept!r}.")
        if min_kept and ohem_threshold is None:
            raise ValueError("min_kept only applies with hard-pixel mining: set ohem_threshold as well.")
        self.ohem_threshold = None if ohem_threshold is None else float(ohem_threshold)
        self.min_kept = min_kept

    def forward(self, logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits_a: logits of the first branch, (B, N, *spatial) with N >= 2 classes and 1 to 3 spatial dims.
            logits_b: logits of the second branch, same shape.

        Returns:
            float32 scalar for ``"mean"``/``"sum"``, otherwise a (B, *spatial) float32 tensor.
        """
        _check_logits_pair(logits_a, logits_b, names=("logits_a", "logits_b"))
        with no_autocast(logits_a.device):
            a = logits_a.float()
            b = logits_b.float()
            pseudo_a = a.detach().argmax(dim=1)
            pseudo_b = b.detach().argmax(dim=1)
            ce_a = F.cross_entropy(a, pseudo_b, reduction="none")  # branch a taught by b
            ce_b = F.cross_entropy(b, pseudo_a, reduction="none")
            if self.ohem_threshold is None:
                return reduce_loss(ce_a + ce_b, self.reduction)
            # the probability each branch gives its pseudo-label is exp(-CE)
            keep_a = _hard_pixel_mask(torch.exp(-ce_a.detach()), self.ohem_threshold, self.min_kept)
            keep_b = _hard_pixel_mask(torch.exp(-ce_b.detach()), self.ohem_threshold, self.min_kept)
            ce_a = ce_a * keep_a
            ce_b = ce_b * keep_b
            if self.reduction == LossReduction.MEAN.value:
                return ce_a.sum() / keep_a.sum().clamp(min=1) + ce_b.sum() / keep_b.sum().clamp(min=1)
            return reduce_loss(ce_a + ce_b, self.reduction)


class SoftmaxConsistencyLoss(_Loss):
    """
    Mean Teacher consistency: mean squared error between the student's and the teacher's class softmax,
    ``MSE(softmax(student_logits), stopgrad softmax(teacher_logits))``.

    The teacher (an exponential moving average of the student) is the target and receives no gradient.

    Reference:
        A. Tarvainen, H. Valpola, "Mean teachers are better role models: Weight-averaged consistency
        targets improve semi-supervised deep learning results", NeurIPS 2017.

    Args:
        reduction: {``"mean"``, ``"sum"``, ``"none"``}. ``"mean"`` averages the squared differences over
            every element (B * N * spatial, ``torch.nn.MSELoss``'s convention); ``"sum"`` sums them;
            ``"none"`` returns them with the input shape (B, N, *spatial).
    """

    def __init__(self, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=LossReduction(reduction).value)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """
        Args:
            student_logits: logits of the student, (B, N, *spatial) with N >= 2 classes and 1 to 3 spatial dims.
            teacher_logits: logits of the teacher, same shape; detached here.

        Returns:
            float32 scalar for ``"mean"``/``"sum"``, otherwise a (B, N, *spatial) float32 tensor.
        """
        _check_logits_pair(student_logits, teacher_logits, names=("student_logits", "teacher_logits"))
        with no_autocast(student_logits.device):
            student = torch.softmax(student_logits.float(), dim=1)
            teacher = torch.softmax(teacher_logits.detach().float(), dim=1)
            diff = student - teacher
            return reduce_loss(diff * diff, self.reduction)
