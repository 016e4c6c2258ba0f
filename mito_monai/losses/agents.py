"""
Agents, agent-level correlations and their consistency terms (R4MITO's ``L_corr`` and ``L_rank``).

docs/design.md sections 3.3 and 3.4. The pipeline shared by both terms is :func:`agent_relations`:
average-pool both views' feature maps by ``pool_stride``, select ``K`` agents on the weak view
(:func:`select_agents`), take every view's own features at those positions (:func:`gather_agents`) and
compute each pixel's agent-level correlation ``c_i = softmax_k(F_i . a_k / T)`` (:func:`agent_correlation`).
``L_corr`` compares the correlations with a KL divergence; ``L_rank`` compares Plackett-Luce distributions
over the orderings of each pixel's top agents (:func:`plackett_luce`). Use :class:`AgentRelationLoss` (or
:func:`agent_relations` with :func:`correlation_consistency` and :func:`rank_consistency`) when both terms
are needed, so that the agents are selected once.

All maths runs in float32 with autocast switched off, whatever the input dtype.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from mito_monai.ops.agent_selection import (
    AGENT_STRATEGIES,
    _check_positive_int,
    check_feature_map,
    gather_agents,
    no_autocast,
    select_agents,
)

from ._utils import check_feature_pair, reduce_loss

__all__ = [
    "AGENT_STRATEGIES",
    "AgentRelationLoss",
    "AgentRelations",
    "agent_correlation",
    "agent_relations",
    "correlation_consistency",
    "gather_agents",
    "log_plackett_luce",
    "orthogonal_indices",
    "plackett_luce",
    "rank_consistency",
    "select_agents",
]

# largest ranking length for which the k! orderings are enumerated (8! = 40320 orderings per pixel)
MAX_RANK_LENGTH = 8


def _flatten(features: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B, N, C) float32 view/copy with N = prod(spatial)."""
    return features.float().flatten(2).transpose(1, 2)


def _check_temperature(temperature: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}.")


def agent_correlation(
    features: torch.Tensor, agents: torch.Tensor, temperature: float = 1.0, log: bool = False
) -> torch.Tensor:
    """
    Agent-level correlation of every pixel: ``c_i = softmax_k(F_i . a_k / T)`` (raw dot products, RankMatch).

    Args:
        features: (B, C, *spatial).
        agents: (B, K, C).
        temperature: T > 0.
        log: return ``log c`` (a log-softmax, exact even where ``c`` underflows) instead of ``c``.

    Returns:
        (B, N, K) float32 with N = prod(spatial) in row-major order; sums to 1 over K (``log=False``).
    """
    check_feature_map("features", features)
    _check_temperature(temperature)
    if agents.dim() != 3 or agents.shape[0] != features.shape[0] or agents.shape[2] != features.shape[1]:
        raise ValueError(
            f"agents must have shape (B, K, C) = ({features.shape[0]}, K, {features.shape[1]}), "
            f"got {tuple(agents.shape)}."
        )
    with no_autocast(features.device):
        logits = torch.bmm(_flatten(features), agents.float().transpose(1, 2))  # (B, N, K)
        if temperature != 1.0:
            logits = logits / temperature
        return torch.log_softmax(logits, dim=2) if log else torch.softmax(logits, dim=2)


@functools.lru_cache(maxsize=None)
def _plackett_luce_tables(k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Tables for the k! orderings of range(k), in ``itertools.permutations`` order, built once per (k, device).

    Returns ``(subset_log_mask, suffix_counts)``: subset_log_mask (2^k - 1, k) is 0 where item i belongs to the
    non-empty subset s (bit i of s + 1) and -inf elsewhere; suffix_counts (2^k - 1, k!) is 1 where subset s is
    one of the suffix sets {pi(j), ..., pi(k - 1)} of ordering pi.
    """
    num_subsets = 2**k - 1
    bits = torch.arange(1, num_subsets + 1).unsqueeze(1).bitwise_right_shift(torch.arange(k)).bitwise_and(1)
    subset_log_mask = torch.zeros(num_subsets, k).masked_fill(bits == 0, float("-inf"))
    perms = list(itertools.permutations(range(k)))
    suffix_counts = torch.zeros(num_subsets, len(perms))
    for column, perm in enumerate(perms):
        for j in range(k):
            suffix_counts[sum(1 << item for item in perm[j:]) - 1, column] = 1.0
    return subset_log_mask.to(device), suffix_counts.to(device)


def log_plackett_luce(scores: torch.Tensor, log_input: bool = False) -> torch.Tensor:
    """
    Log Plackett-Luce probabilities of all orderings of the last axis (R4MITO eq. 12).

    ``log P(pi | c) = sum_j [log c_pi(j) - log sum_{j' >= j} c_pi(j')]``. Every ordering uses every score once,
    so the first part is the same for all orderings, and the second is a sum of log-sum-exps over the
    ordering's suffix sets. These are computed once per subset of the k items (2^k - 1 of them, with
    ``logsumexp``, so underflowing scores stay exact) and summed per ordering with one matrix product against
    a table of the orderings' suffix sets, enumerated once per k and device. Float32 throughout.

    Args:
        scores: (..., k) non-negative scores ``c`` (values below float32's smallest normal number are treated
            as that number), or log-scores when ``log_input`` is True (e.g. log-softmax values: the
            Plackett-Luce model only depends on score ratios, so log-correlations can be used directly).
        log_input: whether ``scores`` are log-scores (finite).

    Returns:
        (..., k!) float32 log-probabilities, orderings in ``itertools.permutations(range(k))`` order.
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() < 1:
        raise ValueError("scores must be a tensor with at least one dimension (..., k).")
    k = scores.shape[-1]
    if not 1 <= k <= MAX_RANK_LENGTH:
        raise ValueError(f"the ranked axis must have 1 to {MAX_RANK_LENGTH} entries (k! orderings), got k = {k}.")
    with no_autocast(scores.device):
        values = scores.float()
        if not log_input:
            values = values.clamp_min(torch.finfo(torch.float32).tiny).log()
        # shift so the largest log-score is 0 (the model is invariant to it): smaller magnitudes, less cancellation
        values = values - values.detach().amax(dim=-1, keepdim=True)
        subset_log_mask, suffix_counts = _plackett_luce_tables(k, scores.device)
        subset_lse = torch.logsumexp(values.unsqueeze(-2) + subset_log_mask, dim=-1)  # (..., 2^k - 1)
        return values.sum(-1, keepdim=True) - subset_lse @ suffix_counts


def plackett_luce(scores: torch.Tensor, log_input: bool = False) -> torch.Tensor:
    """
    Plackett-Luce probabilities of all k! orderings of the last axis (R4MITO eq. 12-13).

    ``P(pi | c) = prod_j c_pi(j) / sum_{j' >= j} c_pi(j')``; for three agents (a, b, c) and pi = (a, b, c):
    ``c_a / (c_a + c_b + c_c) * c_b / (c_b + c_c) * c_c / c_c`` (eq. 13). The k! values of each entry sum to 1.

    Args:
        scores: (..., k) positive scores (see :func:`log_plackett_luce`), any float dtype; computed in float32.
        log_input: whether ``scores`` are log-scores.

    Returns:
        (..., k!) float32 probabilities, orderings in ``itertools.permutations(range(k))`` order.
    """
    return log_plackett_luce(scores, log_input=log_input).exp()


def _avg_pool(features: torch.Tensor, stride: int) -> torch.Tensor:
    """Average-pool with kernel = stride; edge windows that do not fit are averaged over their valid part."""
    if stride == 1:
        return features
    # a map smaller than the stride along an axis is pooled to a single pixel along it
    window = tuple(min(stride, size) for size in features.shape[2:])
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[features.dim() - 3]
    return pool(features, kernel_size=window, stride=window, ceil_mode=True)


class AgentRelations(NamedTuple):
    """
    What :func:`agent_relations` computes once for both agent terms.

    Attributes:
        log_corr_strong: (B, N, K) float32 log agent-level correlations of the strong view (with gradient).
        log_corr_weak: (B, N, K) float32 log agent-level correlations of the weak view (detached).
        indices: (B, K) flat positions of the agents on the pooled map.
        spatial_shape: the pooled spatial shape, N = prod(spatial_shape).
    """

    log_corr_strong: torch.Tensor
    log_corr_weak: torch.Tensor
    indices: torch.Tensor
    spatial_shape: tuple[int, ...]


def agent_relations(
    features_strong: torch.Tensor,
    features_weak: torch.Tensor,
    num_agents: int = 128,
    strategy: str = "orthogonal",
    temperature: float = 1.0,
    pool_stride: int = 4,
    generator: torch.Generator | None = None,
    normalize: bool = False,
) -> AgentRelations:
    """
    Shared step of ``L_corr`` and ``L_rank``: pool, select agents on the weak view, correlate both views.

    1. Average-pool both maps with kernel = stride = ``pool_stride`` (1: no pooling; docs/design.md section 3.3 item 4); a
       spatial size not divisible by the stride keeps its edge, averaged over the part of the window inside.
    2. Select agents on the detached weak map (:func:`select_agents`).
    3. Agents of the strong view are the strong view's own features at the same positions; gradient flows
       through them and through the strong pixels. The weak view is detached throughout.
    4. Log agent-level correlations of both views (:func:`agent_correlation` with ``log=True``).

    Args:
        features_strong: (B, C, *spatial) features of the strongly augmented view.
        features_weak: features of the weakly augmented view, same shape.
        num_agents: K (fewer when the pooled map has fewer pixels).
        strategy: agent selection, see :func:`select_agents`.
        temperature: T of the correlation softmax.
        pool_stride: average-pooling stride applied to both maps first.
        generator: optional generator for the ``"random"`` strategy.
        normalize: L2-normalise both pooled maps over channels first, so correlations are cosine
            similarities divided by T. With raw dot products (False, RankMatch's definition) the
            consistency can be met by shrinking the feature norms (both views' softmaxes become flat),
            which on the demo domains squeezed the logits and sent every target probability below 0.5
            (see docs/results.md); cosines remove that shortcut.
    """
    check_feature_pair(features_strong, features_weak)
    _check_positive_int("pool_stride", pool_stride)
    with no_autocast(features_strong.device):
        strong = _avg_pool(features_strong.float(), pool_stride)
        weak = _avg_pool(features_weak.detach().float(), pool_stride)
        if normalize:
            strong = torch.nn.functional.normalize(strong, dim=1)
            weak = torch.nn.functional.normalize(weak, dim=1)
        weak_agents, indices = select_agents(weak, num_agents, strategy, generator)
        strong_agents = gather_agents(strong, indices)
        log_weak = agent_correlation(weak, weak_agents, temperature, log=True)
        log_strong = agent_correlation(strong, strong_agents, temperature, log=True)
    return AgentRelations(log_strong, log_weak, indices, tuple(strong.shape[2:]))


def _check_topk(topk: int) -> int:
    _check_positive_int("topk", topk)
    if topk > MAX_RANK_LENGTH:
        raise ValueError(f"topk must be at most {MAX_RANK_LENGTH} (topk! orderings per pixel), got {topk}.")
    return topk


def _per_pixel(kl: torch.Tensor, entry_mean: bool, relations: AgentRelations, reduction: str) -> torch.Tensor:
    """
    Reduce (B, N, entries) KL terms: over the entries (mean or sum), then over pixels by ``reduction``;
    ``"none"`` gives the per-pixel values the pooled spatial shape (B, *spatial).
    """
    values = kl.mean(-1) if entry_mean else kl.sum(-1)
    if reduction == LossReduction.NONE.value:
        return values.reshape(values.shape[0], *relations.spatial_shape)
    return reduce_loss(values, reduction)


def correlation_consistency(
    relations: AgentRelations, reduction: LossReduction | str = "mean", entry_mean: bool = False
) -> torch.Tensor:
    """
    ``L_corr = KL(c^aug || c^Aug)`` summed over the K agents, per pixel (docs/design.md section 3.3 item 3).

    Args:
        relations: output of :func:`agent_relations`.
        reduction: ``"mean"`` over pixels and batch, ``"sum"``, or ``"none"`` for (B, *pooled spatial).
        entry_mean: divide each pixel's KL by K, the number of entries of its distribution (see
            :class:`AgentRelationLoss`).
    """
    reduction = LossReduction(reduction).value
    with no_autocast(relations.log_corr_strong.device):
        kl = F.kl_div(relations.log_corr_strong, relations.log_corr_weak, reduction="none", log_target=True)
        return _per_pixel(kl, entry_mean, relations, reduction)


def rank_consistency(
    relations: AgentRelations, topk: int = 4, reduction: LossReduction | str = "mean", entry_mean: bool = False
) -> torch.Tensor:
    """
    ``L_rank = KL(P(.|c^aug) || P(.|c^Aug))`` over the orderings of each pixel's top agents (docs/design.md section 3.4).

    The ``topk`` agents are those with the largest weak correlation (fewer when there are fewer agents);
    both views' correlations are gathered at these indices and turned into Plackett-Luce distributions
    over the ``topk!`` orderings (from the log-correlations, so underflowing correlations stay exact).

    Args:
        relations: output of :func:`agent_relations`.
        topk: number of top agents ranked per pixel, 1 to 8 (R4MITO: 4).
        reduction: ``"mean"`` over pixels and batch, ``"sum"``, or ``"none"`` for (B, *pooled spatial).
        entry_mean: divide each pixel's KL by ``topk!``, the number of orderings (see :class:`AgentRelationLoss`).
    """
    _check_topk(topk)
    reduction = LossReduction(reduction).value
    log_strong, log_weak = relations.log_corr_strong, relations.log_corr_weak
    k = min(topk, log_weak.shape[-1])
    with no_autocast(log_strong.device):
        top = log_weak.topk(k, dim=-1).indices  # (B, N, k)
        log_p_weak = log_plackett_luce(log_weak.gather(-1, top), log_input=True)
        log_p_strong = log_plackett_luce(log_strong.gather(-1, top), log_input=True)
        kl = F.kl_div(log_p_strong, log_p_weak, reduction="none", log_target=True)
        return _per_pixel(kl, entry_mean, relations, reduction)


class AgentRelationLoss(_Loss):
    """
    ``L_corr`` and ``L_rank`` together, selecting the agents and computing the correlations once.

    Returns the tuple ``(L_corr, L_rank)``; weight and sum them in the trainer (two
    :class:`~mito_monai.engines.LossTerm` with ``output`` 0 and 1 share one call).

    ``L_corr`` (R4MITO's correlation-wise consistency): KL(c^aug || c^Aug) of the agent-level correlations,
    weak view detached, averaged over the (pooled) pixels. ``L_rank`` (rank-aware relationship consistency,
    paper eq. 12-14): per pixel, the Plackett-Luce distributions over the orderings of the weak view's
    top-``topk`` agents, compared with KL(P(.|c^aug) || P(.|c^Aug)), weak view detached.

    Args:
        num_agents: K agents selected on the weak view (R4MITO: 128).
        topk: agents ranked per pixel for ``L_rank``, 1 to 8 (R4MITO: 4, i.e. 24 orderings).
        strategy: agent selection, ``"orthogonal"``, ``"random"`` or ``"all"`` (see :func:`select_agents`).
        temperature: T of ``softmax_k(F_i . a_k / T)`` (RankMatch/R4MITO: 1).
        pool_stride: average-pooling stride of both maps before everything else (1: full resolution).
        reduction: ``"mean"``, ``"sum"``, or ``"none"`` for (B, *pooled spatial) per-pixel values.
        normalize: correlate L2-normalised features (cosine / T) instead of raw dot products
            (see :func:`agent_relations`).
        entry_mean: average each pixel's KL over the entries of its distribution (see Scale below).

    Scale (``entry_mean``): docs/design.md section 3.3-3.4 average the per-pixel KL over pixels, summing over the
    entries of each pixel's distribution. The public RankMatch code, which R4MITO's rank term comes
    from, computes it with ``torch.nn.KLDivLoss(reduction="mean")`` over (B, H, W, entries), i.e.
    also averaged over the entries: 1/24 of the per-pixel sum for the top-4 orderings, 1/K for the
    correlations. The paper's weights (0.1) belong to that scale; ``entry_mean=True`` reproduces it.
    """

    def __init__(
        self,
        num_agents: int = 128,
        topk: int = 4,
        strategy: str = "orthogonal",
        temperature: float = 1.0,
        pool_stride: int = 4,
        reduction: LossReduction | str = LossReduction.MEAN,
        normalize: bool = False,
        entry_mean: bool = False,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        _check_positive_int("num_agents", num_agents)
        if strategy not in AGENT_STRATEGIES:
            raise ValueError(f"strategy must be one of {AGENT_STRATEGIES}, got {strategy!r}.")
        _check_temperature(temperature)
        _check_positive_int("pool_stride", pool_stride)
        self.num_agents = num_agents
        self.strategy = strategy
        self.temperature = float(temperature)
        self.pool_stride = pool_stride
        self.normalize = bool(normalize)
        self.entry_mean = bool(entry_mean)
        self.topk = _check_topk(topk)

    def relations(self, features_strong: torch.Tensor, features_weak: torch.Tensor) -> AgentRelations:
        """:func:`agent_relations` with this loss's settings."""
        return agent_relations(
            features_strong,
            features_weak,
            self.num_agents,
            self.strategy,
            self.temperature,
            self.pool_stride,
            normalize=self.normalize,
        )

    def forward(self, features_strong: torch.Tensor, features_weak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            features_strong: (B, C, *spatial) strong-view features (receive the gradient).
            features_weak: weak-view features, same shape (detached).

        Returns:
            ``(L_corr, L_rank)``.
        """
        relations = self.relations(features_strong, features_weak)
        corr = correlation_consistency(relations, self.reduction, self.entry_mean)
        return corr, rank_consistency(relations, self.topk, self.reduction, self.entry_mean)
