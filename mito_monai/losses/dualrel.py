"""DualRel's prototype-level terms: reliable prototype consistency (``L_rpc``) and diversity (``L_div``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from ._utils import no_autocast, reduce_loss

__all__ = ["PrototypeDiversityLoss", "ReliablePrototypeConsistencyLoss"]


def _check_bkc(name: str, value: torch.Tensor) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got dtype {value.dtype}.")
    if value.dim() != 3:
        raise ValueError(f"{name} must have shape (B, K, C), got {tuple(value.shape)}.")


class ReliablePrototypeConsistencyLoss(_Loss):
    """
    Reliability-weighted prototype consistency between the two DualRel branches (DualRel eq. 10)::

        L_rpc = mean_{b, k} ( exp(1 - 1 / r_k) * ||p_k^1 - p_k^2||_2  -  reg_weight * r_k )

    ``exp(1 - 1/r)`` is 1 at ``r = 1`` and goes to 0 as ``r -> 0``: an unreliable prototype contributes little
    consistency; the ``-reg_weight * r`` term keeps the reliabilities from collapsing to zero. For a fixed
    distance ``d``, ``dL/dr = exp(1 - 1/r) d / r^2 - reg_weight``: prototypes that agree (small ``d``) get a
    negative gradient (``r`` rises), prototypes that disagree strongly get a positive one (``r`` falls).
    Gradients flow into both prototype sets and into the reliabilities (the paper mentions no stop-gradient).

    ``reg_weight`` is the paper's ``lambda`` of eq. 10, whose value the paper does not report (only
    ``lambda_div = 0.05`` of eq. 13 is given); the default 1.0 is this package's choice: ``r_k -> 1`` is then the
    equilibrium exactly when the L2 distance is below 1 (the gradient at ``r = 1`` is ``d - reg_weight``).

    ``use_reliability=False`` is the paper's Table 4 row without reliable prototype selection (RPrS): plain
    prototype consistency ``mean_{b, k} ||p_k^1 - p_k^2||_2``, every prototype weighted 1 and no regulariser;
    ``forward`` then takes no reliabilities (pass none, so the reliability head is not evaluated).

    Args:
        reg_weight: ``lambda >= 0``, weight of the reliability regulariser.
        use_reliability: weight each prototype by its reliability (eq. 10, default) or not (Table 4 ablation).
        reduction: {``"mean"``, ``"sum"``, ``"none"``}. ``"mean"`` averages over the batch and the K
            prototypes (eq. 10 per image, averaged over images); ``"none"`` returns the (B, K) terms.
    """

    def __init__(
        self,
        reg_weight: float = 1.0,
        use_reliability: bool = True,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if isinstance(reg_weight, bool) or not isinstance(reg_weight, (int, float)) or not reg_weight >= 0:
            raise ValueError(f"reg_weight must be a non-negative number, got {reg_weight!r}.")
        if not isinstance(use_reliability, bool):
            raise TypeError(f"use_reliability must be True or False, got {use_reliability!r}.")
        self.reg_weight = float(reg_weight)
        self.use_reliability = use_reliability

    def forward(
        self, prototypes_a: torch.Tensor, prototypes_b: torch.Tensor, reliability: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Args:
            prototypes_a: (B, K, C) prototypes of branch 1.
            prototypes_b: (B, K, C) prototypes of branch 2.
            reliability: (B, K) reliabilities ``r_k`` in (0, 1]; required with ``use_reliability``, and must be
                ``None`` without it.

        Returns:
            scalar for ``"mean"``/``"sum"``, otherwise the (B, K) float32 terms.
        """
        _check_bkc("prototypes_a", prototypes_a)
        _check_bkc("prototypes_b", prototypes_b)
        if prototypes_a.shape != prototypes_b.shape:
            raise ValueError(
                f"prototypes_a {tuple(prototypes_a.shape)} and prototypes_b {tuple(prototypes_b.shape)} must have "
                "the same shape (B, K, C)."
            )
        if not self.use_reliability:
            if reliability is not None:
                raise ValueError(
                    "use_reliability=False ignores reliabilities: pass none (so that the reliability head is not run)."
                )
        else:
            if not isinstance(reliability, torch.Tensor) or not reliability.is_floating_point():
                raise TypeError("reliability must be a floating point torch.Tensor of shape (B, K).")
            if tuple(reliability.shape) != tuple(prototypes_a.shape[:2]):
                raise ValueError(
                    f"reliability must have shape (B, K) = {tuple(prototypes_a.shape[:2])}, "
                    f"got {tuple(reliability.shape)}."
                )
            with torch.no_grad():
                bad = ~((reliability > 0) & (reliability <= 1))
                if bool(bad.any()):
                    raise ValueError(
                        "reliability must lie in (0, 1], got values in "
                        f"[{reliability.min().item():.6g}, {reliability.max().item():.6g}] "
                        f"({int(bad.sum())} outside, NaN included)."
                    )
        with no_autocast(prototypes_a.device):
            distance = torch.linalg.vector_norm(prototypes_a.float() - prototypes_b.float(), ord=2, dim=-1)
            if not self.use_reliability:
                return reduce_loss(distance, self.reduction)
            r = reliability.float()
            terms = torch.exp(1.0 - 1.0 / r) * distance - self.reg_weight * r
            return reduce_loss(terms, self.reduction)


class PrototypeDiversityLoss(_Loss):
    """
    Diversity of the mito features (DualRel eq. 11): the sum over ordered pairs ``i != j`` of cosine similarity::

        L_div = sum_{i} sum_{j != i} <f~_i, f~_j> / (||f~_i|| ||f~_j||)

    It lies in ``[-K(K-1), K(K-1)]``: 0 for mutually orthogonal features, ``K(K-1)`` for identical (parallel)
    ones. The paper's weight ``lambda_div = 0.05`` (eq. 13, Fig. 3) is applied by the caller. Norms are clamped
    at 1e-8 (``torch.nn.functional.normalize``), so a zero feature has cosine 0 with every other one.

    Args:
        reduction: {``"mean"``, ``"sum"``, ``"none"``} over the batch; ``"none"`` returns the (B,) per-image sums.
    """

    def __init__(self, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=LossReduction(reduction).value)

    def forward(self, mito_features: torch.Tensor) -> torch.Tensor:
        """
        Args:
            mito_features: (B, K, C) mito features of one branch.

        Returns:
            scalar for ``"mean"``/``"sum"``, otherwise (B,) float32.
        """
        _check_bkc("mito_features", mito_features)
        with no_autocast(mito_features.device):
            unit = F.normalize(mito_features.float(), dim=-1, eps=1e-8)
            cosine = torch.bmm(unit, unit.transpose(1, 2))  # (B, K, K)
            off_diagonal = cosine.sum(dim=(1, 2)) - torch.diagonal(cosine, dim1=1, dim2=2).sum(dim=1)
            return reduce_loss(off_diagonal, self.reduction)
