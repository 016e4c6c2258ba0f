"""Weak/strong view consistency terms of the CAFA-style baseline (R4MITO's ``L_cf`` and ``L_reg``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from ._utils import check_feature_pair, no_autocast, reduce_loss

__all__ = ["FeatureConsistencyLoss", "PseudoLabelConsistencyLoss"]


class FeatureConsistencyLoss(_Loss):
    """
    Feature-level consistency ``L_cf = MSE(F(Aug x), stopgrad F(aug x))`` (R4MITO eq. 2, CAFA).

    The weak view's features are the target and receive no gradient; only the strong view is trained.

    Args:
        reduction: {``"mean"``, ``"sum"``, ``"none"``}. ``"mean"`` averages the squared differences over every
            element (``torch.nn.MSELoss``'s convention); ``"none"`` returns them with the input shape.
    """

    def __init__(self, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=LossReduction(reduction).value)

    def forward(self, features_strong: torch.Tensor, features_weak: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features_strong: features of the strongly augmented view, (B, C, *spatial).
            features_weak: features of the weakly augmented view, same shape; detached here.

        Returns:
            scalar for ``"mean"``/``"sum"``, otherwise a (B, C, *spatial) float32 tensor.
        """
        check_feature_pair(features_strong, features_weak)
        with no_autocast(features_strong.device):
            diff = features_strong.float() - features_weak.detach().float()
            return reduce_loss(diff * diff, self.reduction)


class PseudoLabelConsistencyLoss(_Loss):
    """
    Prediction-level consistency ``L_reg = CE(f(Aug x), argmax stopgrad f(aug x))`` (R4MITO eq. 2, CAFA).

    The hard pseudo-label of every pixel is the argmax of the weak view's logits (no gradient). CAFA uses
    no confidence threshold (``threshold=None``). With a threshold, pixels whose weak softmax confidence
    is below it contribute zero; the ``"mean"`` reduction still divides by the number of all pixels
    (FixMatch's convention), so the term shrinks while few pixels are confident.

    Class prior (``min_foreground_fraction=q``, two classes only, ours, not the papers'): a source model
    applied to a distant target often predicts far less foreground than there is, and self-training on
    its argmax then teaches the network to predict even less. With ``q`` set, a pixel of the batch is a
    foreground pseudo-label when its weak foreground probability is at least ``min(0.5, t_q)``, where
    ``t_q`` is the batch's ``(1 - q)`` quantile of that probability: at least a fraction ``q`` of the
    batch's pixels are foreground (the most probable ones), and a batch where the argmax already gives
    more keeps its argmax. ``q`` is a prior on the target's class balance that reads no target label,
    e.g. the foreground fraction of the source labels
    (:func:`mito_monai.datasets.label_foreground_fraction`). The confidence of a pixel (for ``threshold``)
    is the probability of its pseudo-label.

    Args:
        threshold: optional confidence threshold in (0, 1]; a pixel counts when ``max softmax >= threshold``.
        min_foreground_fraction: optional ``q`` in (0, 1) of the class prior above (None: plain argmax).
        reduction: {``"mean"``, ``"sum"``, ``"none"``}; ``"none"`` returns the (B, *spatial) per-pixel losses.
    """

    def __init__(
        self,
        threshold: float | None = None,
        reduction: LossReduction | str = LossReduction.MEAN,
        min_foreground_fraction: float | None = None,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
                raise ValueError(f"threshold must be None or a number in (0, 1], got {threshold!r}.")
            threshold = float(threshold)
        self.threshold = threshold
        q = min_foreground_fraction
        if q is not None:
            if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < q < 1.0:
                raise ValueError(f"min_foreground_fraction must be None or a number in (0, 1), got {q!r}.")
            q = float(q)
        self.min_foreground_fraction = q

    def forward(self, logits_strong: torch.Tensor, logits_weak: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits_strong: logits of the strongly augmented view, (B, N, *spatial) with N >= 2 classes.
            logits_weak: logits of the weakly augmented view, same shape; used only through its argmax
                (and softmax confidence) and never receives gradient.

        Returns:
            scalar for ``"mean"``/``"sum"``, otherwise (B, *spatial) per-pixel losses.
        """
        check_feature_pair(logits_strong, logits_weak, names=("logits_strong", "logits_weak"))
        if logits_strong.shape[1] < 2:
            raise ValueError(f"expected logits with at least 2 class channels, got shape {tuple(logits_strong.shape)}.")
        if self.min_foreground_fraction is not None and logits_strong.shape[1] != 2:
            raise ValueError(
                f"min_foreground_fraction needs 2 class channels (background, foreground), got shape "
                f"{tuple(logits_strong.shape)}."
            )
        with no_autocast(logits_strong.device):
            weak = logits_weak.detach().float()
            prob = torch.softmax(weak, dim=1)
            if self.min_foreground_fraction is None:
                pseudo = weak.argmax(dim=1)
            else:
                pseudo = (prob[:, 1] >= prior_threshold(prob[:, 1], self.min_foreground_fraction)).long()
            per_pixel = F.cross_entropy(logits_strong.float(), pseudo, reduction="none")
            if self.threshold is not None:
                confidence = prob.gather(1, pseudo.unsqueeze(1)).squeeze(1)
                per_pixel = per_pixel * (confidence >= self.threshold).to(per_pixel.dtype)
            return reduce_loss(per_pixel, self.reduction)


def prior_threshold(foreground: torch.Tensor, fraction: float) -> torch.Tensor:
    """``min(0.5, t)`` where ``t`` is the ``(1 - fraction)`` quantile of ``foreground`` (any shape): the
    foreground-probability threshold above which at least ``fraction`` of the elements lie (a 0-dim tensor)."""
    flat = foreground.reshape(-1)
    k = max(1, int(round(fraction * flat.numel())))
    kth_largest = torch.topk(flat, k, largest=True, sorted=False).values.min()
    return torch.clamp(kth_largest, max=0.5)
