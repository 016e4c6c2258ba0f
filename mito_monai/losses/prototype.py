"""Reliable prototype pseudo-labels (R4MITO's ``L_pro``, docs/design.md section 3.2)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from ._utils import check_feature_map, labels_to_index, no_autocast

__all__ = ["PrototypePseudoLabelLoss", "class_prototypes", "cosine_similarity_map"]

_EPS = 1e-8
# logit given to an undefined class: exp() underflows to 0 next to any cosine / T, yet a row made only of it
# stays finite (uniform softmax) where -inf would give NaN gradients
_MASKED_LOGIT = -1e9


def _inverse_norms(flat: torch.Tensor) -> torch.Tensor:
    """(B, C, N) float32 -> (B, 1, N) reciprocal pixel norms, ``1 / max(||F_i||, eps)`` (``F.normalize``'s rule)."""
    # clamp before the square root: a zero pixel then gets a zero, not a NaN, gradient
    return flat.square().sum(dim=1, keepdim=True).clamp_min(_EPS * _EPS).rsqrt()


def _prototypes(flat: torch.Tensor, inv_norms: torch.Tensor, index: torch.Tensor, num_classes: int):
    """Prototypes and counts from a (B, C, N) map, its inverse norms and (B, N) labels, without a normalised copy."""
    classes = torch.arange(num_classes, device=flat.device)
    onehot = (index.unsqueeze(1) == classes.view(1, -1, 1)).to(flat.dtype)  # (B, K, N)
    sums = torch.bmm(flat, (onehot * inv_norms).transpose(1, 2)).sum(0).t()  # (K, C) sums of normalize(F)
    counts = onehot.sum(dim=(0, 2))
    means = sums / counts.clamp_min(1.0).unsqueeze(1)
    return F.normalize(means, dim=1, eps=_EPS), counts


def _cosines(flat: torch.Tensor, inv_norms: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """(B, K, N) cosines of a (B, C, N) map (with its inverse norms) to (K, C) prototypes."""
    unit_protos = F.normalize(prototypes.float(), dim=1, eps=_EPS)
    return torch.matmul(unit_protos, flat) * inv_norms


def class_prototypes(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Unit-norm class prototypes ``p_k = normalize(mean of normalize(F) over pixels with label k)``.

    Args:
        features: (B, C, *spatial) feature map; every pixel's feature vector is L2-normalised first.
        labels: (B, 1, *spatial) or (B, *spatial) class indices (floating indices are rounded; a different
            spatial size is resized with nearest neighbour). Values outside ``[0, num_classes)`` (e.g. -1 for
            "ignore") belong to no class.
        num_classes: number of classes K.

    Returns:
        ``(prototypes, counts)``: prototypes (K, C) float32, one unit vector per class, computed over the
        whole batch (a class with no pixel gets a zero row); counts (K,) float32, the number of pixels of
        each class. Differentiable with respect to ``features``.
    """
    check_feature_map("features", features)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    index = labels_to_index(labels, features).flatten(1)  # (B, N)
    with no_autocast(features.device):
        flat = features.float().flatten(2)
        return _prototypes(flat, _inverse_norms(flat), index, num_classes)


def cosine_similarity_map(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """
    Cosine similarity of every pixel's feature vector to every prototype.

    Args:
        features: (B, C, *spatial).
        prototypes: (K, C); rows need not be normalised (a zero row gives similarity 0).

    Returns:
        (B, K, *spatial) float32 cosine similarities in [-1, 1].
    """
    check_feature_map("features", features)
    if prototypes.dim() != 2 or prototypes.shape[1] != features.shape[1]:
        raise ValueError(
            f"prototypes must have shape (K, C) with C = {features.shape[1]} feature channels, "
            f"got {tuple(prototypes.shape)}."
        )
    with no_autocast(features.device):
        flat = features.float().flatten(2)
        sim = _cosines(flat, _inverse_norms(flat), prototypes)
    return sim.reshape(features.shape[0], prototypes.shape[0], *features.shape[2:])


class PrototypePseudoLabelLoss(_Loss):
    """
    Reliable prototype pseudo-label loss ``L_pro`` of R4MITO, as reconstructed in docs/design.md section 3.2.

    1. Source prototypes ``p_k^s = normalize(mean of normalize(F_s) over pixels with y_s = k)`` over the batch
       (optionally EMA-smoothed across batches, see ``ema``).
    2. ``S_k = cos(F_t^aug, p_k^s)`` for every target pixel of the weak view.
    3. Reliable target pixels of class k: ``S_k > tau`` and ``k = argmax_k S_k``.
    4. Target prototypes ``p_k^t`` = normalised mean of the normalised weak-view features of the reliable
       pixels of class k; a class without reliable pixels falls back to ``p_k^s``.
    5. ``L_pro = CE(cos(F_t^Aug, p^t) / T, target_pseudo_labels)``.

    Gradient: all prototypes are treated as targets and detached (like pseudo-labels), so gradient flows
    only into ``target_features_strong``; source features and the weak view receive none. This keeps the
    term's behaviour the same whether or not a class fell back to its source prototype (the EMA memory
    could not carry gradient anyway); the source features are trained by the supervised loss.

    Classes without any prototype: a class absent from the source batch uses the EMA memory when one is
    kept and has seen the class. Otherwise the class is *undefined* for this batch: it cannot be reliable,
    its logit is excluded from the softmax, and target pixels pseudo-labelled with it are ignored. The loss
    is therefore always finite; with no pixel left it is an exact zero that stays connected to the graph.

    Args:
        tau: reliability threshold on the cosine similarity, in [-1, 1). R4MITO uses 0.7.
        temperature: T, the cosines are divided by it before the softmax (CAFA/R4MITO: 1).
        num_classes: number of classes K (2: background, mitochondria).
        ema: ``None`` for per-batch source prototypes, or a momentum in [0, 1): the source prototype of a class
            present in the batch becomes ``normalize(ema * memory + (1 - ema) * batch prototype)`` (the batch
            prototype alone the first time) and is stored; an absent class uses its stored value. ``ema=0``
            keeps per-batch prototypes with a memory for absent classes. The memory is a buffer (saved in
            ``state_dict``) updated on every forward call.
        reduction: {``"mean"``, ``"sum"``, ``"none"``}. ``"mean"`` averages over the pixels that are not
            ignored; ``"none"`` returns (B, *spatial) per-pixel losses (0 at ignored pixels).
    """

    def __init__(
        self,
        tau: float = 0.7,
        temperature: float = 1.0,
        num_classes: int = 2,
        ema: float | None = None,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not -1.0 <= tau < 1.0:
            raise ValueError(f"tau must be a number in [-1, 1), got {tau!r}.")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}.")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
        if ema is not None and (isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0.0 <= ema < 1.0):
            raise ValueError(f"ema must be None or a number in [0, 1), got {ema!r}.")
        self.tau = float(tau)
        self.temperature = float(temperature)
        self.num_classes = num_classes
        self.ema = None if ema is None else float(ema)
        # EMA memory of the source prototypes, sized (K, C) on first use
        self.register_buffer("prototype_memory", torch.zeros(0, 0))
        self.register_buffer("prototype_seen", torch.zeros(0, dtype=torch.bool))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # the memory's size is only known after the first forward: adopt the stored size before loading
        for name in ("prototype_memory", "prototype_seen"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def _smooth(self, batch_prototypes: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """EMA-update the memory with the classes present in the batch; return (prototypes, defined)."""
        memory, seen = self.prototype_memory, self.prototype_seen
        if memory.shape != batch_prototypes.shape:
            memory = torch.zeros_like(batch_prototypes)
            seen = torch.zeros_like(present)
        memory, seen = memory.to(batch_prototypes), seen.to(present.device)
        momentum = float(self.ema)  # type: ignore[arg-type]
        blended = F.normalize(momentum * memory + (1.0 - momentum) * batch_prototypes, dim=1, eps=_EPS)
        updated = torch.where(seen.unsqueeze(1), blended, batch_prototypes)
        memory = torch.where(present.unsqueeze(1), updated, memory)
        seen = seen | present
        # plain tensors (features may be MONAI MetaTensors): a checkpoint must load with weights_only=True
        self.prototype_memory, self.prototype_seen = memory.as_subclass(torch.Tensor), seen.as_subclass(torch.Tensor)
        return memory.clone(), seen.clone()

    def forward(
        self,
        source_features: torch.Tensor,
        source_labels: torch.Tensor,
        target_features_weak: torch.Tensor,
        target_features_strong: torch.Tensor,
        target_pseudo_labels: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            source_features: (Bs, C, *spatial) source decoder features; labels of another spatial size are
                resized to it (nearest).
            source_labels: (Bs, 1, *spatial) or (Bs, *spatial) class indices; values outside
                ``[0, num_classes)`` are ignored.
            target_features_weak: (Bt, C, *spatial_t) target features of the weak view (used detached).
            target_features_strong: target features of the strong view, same shape as the weak ones.
            target_pseudo_labels: (Bt, 1, *spatial_t) or (Bt, *spatial_t) class indices (e.g. the argmax of
                the weak view's logits), resized (nearest) when their size differs; or the weak view's
                (Bt, num_classes, *spatial_t) logits/probabilities, whose argmax is then taken.

        Returns:
            scalar for ``"mean"``/``"sum"``, otherwise (Bt, *spatial_t) per-pixel losses.
        """
        check_feature_map("source_features", source_features)
        check_feature_map("target_features_weak", target_features_weak)
        check_feature_map("target_features_strong", target_features_strong)
        if target_features_weak.shape != target_features_strong.shape:
            raise ValueError(
                f"target_features_weak {tuple(target_features_weak.shape)} and target_features_strong "
                f"{tuple(target_features_strong.shape)} must have the same shape."
            )
        if (
            source_features.dim() != target_features_strong.dim()
            or source_features.shape[1] != target_features_strong.shape[1]
        ):
            raise ValueError(
                f"source_features {tuple(source_features.shape)} and target features "
                f"{tuple(target_features_strong.shape)} must have the same rank and channel number."
            )
        if (
            target_pseudo_labels.is_floating_point()
            and target_pseudo_labels.dim() == target_features_strong.dim()
            and target_pseudo_labels.shape[1] == self.num_classes
        ):
            target_pseudo_labels = target_pseudo_labels.detach().argmax(dim=1)
        num_classes = self.num_classes
        device = target_features_strong.device
        class_shape = (1, num_classes) + (1,) * (target_features_strong.dim() - 2)

        with torch.no_grad():
            source_protos, source_counts = class_prototypes(source_features.detach(), source_labels, num_classes)
            defined = source_counts > 0
            if self.ema is not None:
                source_protos, defined = self._smooth(source_protos, defined)
            with no_autocast(device):
                weak = target_features_weak.detach().float().flatten(2)  # (Bt, C, N)
                weak_inv_norms = _inverse_norms(weak)
                similarity = _cosines(weak, weak_inv_norms, source_protos)  # (Bt, K, N)
                similarity = similarity.masked_fill(~defined.view(1, num_classes, 1), float("-inf"))
                best, best_class = similarity.max(dim=1)
                reliable_labels = torch.where(best > self.tau, best_class, torch.full_like(best_class, -1))
                target_protos, target_counts = _prototypes(weak, weak_inv_norms, reliable_labels, num_classes)
                prototypes = torch.where((target_counts > 0).unsqueeze(1), target_protos, source_protos)

        with no_autocast(device):
            logits = cosine_similarity_map(target_features_strong, prototypes) / self.temperature
            logits = logits.masked_fill(~defined.view(class_shape), _MASKED_LOGIT)
            target = labels_to_index(target_pseudo_labels, target_features_strong, "target_pseudo_labels")
            in_range = (target >= 0) & (target < num_classes)
            keep = in_range & defined[target.clamp(0, num_classes - 1)]
            target = target.masked_fill(~keep, -100)
            per_pixel = F.cross_entropy(logits, target, ignore_index=-100, reduction="none")
            if self.reduction == LossReduction.MEAN.value:
                return per_pixel.sum() / keep.sum().clamp_min(1).to(per_pixel.dtype)
            if self.reduction == LossReduction.SUM.value:
                return per_pixel.sum()
            return per_pixel
