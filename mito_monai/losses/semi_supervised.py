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


class CrossPseudoSupervisionLoss(_Loss):
    """
    Cross Pseudo Supervision (CPS) between two segmentation branches:
    ``CE(logits_a, argmax logits_b) + CE(logits_b, argmax logits_a)``.

    Each branch is supervised by the other branch's hard pseudo-label (argmax over the class axis, no
    gradient), so a branch is trained only through its own logits. The per-pixel loss is the sum of the
    two cross-entropy maps.

    Reference:
        X. Chen, Y. Yuan, G. Zeng, J. Wang, "Semi-Supervised Semantic Segmentation with Cross Pseudo
        Supervision", CVPR 2021.

    Args:
        reduction: {``"mean"``, ``"sum"``, ``"none"``}. ``"mean"`` averages the per-pixel sum of the two
            cross-entropies over the batch and all pixels; ``"sum"`` sums it; ``"none"`` returns the
            (B, *spatial) per-pixel map.
    """

    def __init__(self, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=LossReduction(reduction).value)

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
            per_pixel = F.cross_entropy(a, pseudo_b, reduction="none") + F.cross_entropy(b, pseudo_a, reduction="none")
            return reduce_loss(per_pixel, self.reduction)


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
