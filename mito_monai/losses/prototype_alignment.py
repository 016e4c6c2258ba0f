"""CAFA's class-aware prototype alignment (from the public CAFA code, docs/design.md section 3.7; not in R4MITO's text)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from ._utils import check_feature_map, labels_to_index, no_autocast
from .prototype import class_prototypes

__all__ = ["PrototypeAlignmentLoss"]


class PrototypeAlignmentLoss(_Loss):
    """
    The three prototype alignment terms of the public CAFA code, on per-batch source prototypes
    ``p_k = normalize(mean of normalize(F_s) over source pixels of class k)``:

    - source compactness ``L_compact = sum_k mean_{i: y_i = k} (1 - f_i . p_k)^2 / 2`` (``f_i`` the
      L2-normalised source feature of pixel i; classes absent from the batch are skipped);
    - prototype separation ``L_sep = mean_{k < l} (p_k . p_l)^2`` (``(p_0 . p_1)^2`` for two classes);
    - target alignment ``L_align = mean_{i in R} (1 - g_i . p_{k(i)})^2 / 2`` over the target pixels
      ``R`` whose largest cosine to a prototype exceeds ``tau`` (0.7 in CAFA), ``k(i)`` that prototype,
      ``g_i`` the L2-normalised target feature; the prototypes are detached here, so the target term pulls
      target features towards the source classes and does not move the prototypes.

    ``forward`` returns the tuple ``(L_compact, L_sep, L_align)``; give each to a
    :class:`~mito_monai.engines.LossTerm` with ``output=0/1/2`` (the terms share one call a step). Every
    value is a finite scalar; with no reliable target pixel ``L_align`` is an exact zero connected to
    the graph.

    Args:
        tau: cosine threshold of the target pixels, in [-1, 1).
        num_classes: K (2: background, mitochondria).

    Shapes: ``source_features`` (B, C, H, W), ``source_labels`` (B, 1, H, W) (resized with nearest
    neighbour if the feature map is smaller), ``target_features`` (B', C, H', W').
    """

    def __init__(self, tau: float = 0.7, num_classes: int = 2) -> None:
        super().__init__()
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not -1.0 <= tau < 1.0:
            raise ValueError(f"tau must be a number in [-1, 1), got {tau!r}.")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
        self.tau = float(tau)
        self.num_classes = num_classes

    def forward(
        self, source_features: torch.Tensor, source_labels: torch.Tensor, target_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        check_feature_map("source_features", source_features)
        check_feature_map("target_features", target_features)
        if target_features.shape[1] != source_features.shape[1]:
            raise ValueError(
                f"source and target features must have the same channels, got {source_features.shape[1]} "
                f"and {target_features.shape[1]}."
            )
        index = labels_to_index(source_labels, source_features).flatten(1)  # (B, N)
        prototypes, counts = class_prototypes(source_features, source_labels, self.num_classes)  # (K, C), (K,)
        present = counts > 0
        with no_autocast(source_features.device):
            unit = F.normalize(source_features.float().flatten(2), dim=1)  # (B, C, N)
            cos = torch.einsum("kc,bcn->bkn", prototypes, unit)  # (B, K, N)
            compact = unit.sum() * 0.0
            for k in range(self.num_classes):
                mask = index == k
                if present[k]:
                    compact = compact + ((1.0 - cos[:, k][mask]) ** 2).mean() / 2.0
            pairs = [(k, m) for k in range(self.num_classes) for m in range(k + 1, self.num_classes)]
            pairs = [(k, m) for k, m in pairs if present[k] and present[m]]
            separation = prototypes.sum() * 0.0
            if pairs:
                separation = separation + torch.stack([(prototypes[k] @ prototypes[m]) ** 2 for k, m in pairs]).mean()
            target = F.normalize(target_features.float().flatten(2), dim=1)
            t_cos = torch.einsum("kc,bcn->bkn", prototypes.detach(), target)
            t_cos = t_cos.masked_fill(~present.view(1, -1, 1), -2.0)  # an absent class attracts nothing
            best, _ = t_cos.max(dim=1)  # (B', N')
            reliable = best > self.tau
            align = target.sum() * 0.0
            if reliable.any():
                align = align + ((1.0 - best[reliable]) ** 2).mean() / 2.0
        return compact, separation, align
