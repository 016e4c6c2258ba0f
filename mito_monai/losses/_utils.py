"""Small helpers shared by the loss modules (not part of the public API)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.utils import LossReduction

from mito_monai.ops.agent_selection import check_feature_map, no_autocast

__all__ = ["check_feature_map", "check_feature_pair", "labels_to_index", "no_autocast", "reduce_loss"]


def reduce_loss(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply a MONAI ``LossReduction`` (``"mean"``, ``"sum"`` or ``"none"``) to per-element loss values."""
    if reduction == LossReduction.MEAN.value:
        return values.mean()
    if reduction == LossReduction.SUM.value:
        return values.sum()
    if reduction == LossReduction.NONE.value:
        return values
    raise ValueError(f'unsupported reduction {reduction!r}, available options are ["mean", "sum", "none"].')


def check_feature_pair(
    strong: torch.Tensor, weak: torch.Tensor, names: tuple[str, str] = ("features_strong", "features_weak")
) -> None:
    """:func:`check_feature_map` on both views, and raise when their shapes differ."""
    check_feature_map(names[0], strong)
    check_feature_map(names[1], weak)
    if strong.shape != weak.shape:
        raise ValueError(
            f"{names[0]} {tuple(strong.shape)} and {names[1]} {tuple(weak.shape)} must have the same shape."
        )


def labels_to_index(labels: torch.Tensor, features: torch.Tensor, name: str = "labels") -> torch.Tensor:
    """
    Bring integer class labels to the spatial shape of ``features`` as a (B, *spatial) long tensor.

    ``labels`` is (B, 1, *spatial) or (B, *spatial); floating labels holding class indices (MONAI's usual
    float label tensors) are rounded. A spatial size different from the features' is resized with nearest
    neighbour interpolation. Negative or out-of-range values pass through unchanged (callers ignore them).
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}.")
    if labels.dim() == features.dim():
        if labels.shape[1] != 1:
            raise ValueError(
                f"{name} with a channel axis must have one channel (B, 1, *spatial), got shape {tuple(labels.shape)}."
            )
    elif labels.dim() == features.dim() - 1:
        labels = labels.unsqueeze(1)
    else:
        raise ValueError(
            f"{name} must have shape (B, 1, *spatial) or (B, *spatial) matching features {tuple(features.shape)}, "
            f"got {tuple(labels.shape)}."
        )
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"{name} batch size {labels.shape[0]} does not match the features' {features.shape[0]}.")
    spatial = tuple(features.shape[2:])
    if tuple(labels.shape[2:]) != spatial:
        labels = F.interpolate(labels.float(), size=spatial, mode="nearest")
    if labels.is_floating_point():
        labels = labels.round()
    return labels[:, 0].long()
