"""DualRel's reliable pixel aggregation: cross-attention rectified by referential correlation (docs/design.md section 4)."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Union

import torch
import torch.nn as nn
from monai.networks.blocks import MLPBlock

from mito_monai.ops import AGENT_STRATEGIES, orthogonal_indices, select_agents

__all__ = ["ReferentialAttentionMaps", "ReferentialCrossAttention"]


class ReferentialAttentionMaps(NamedTuple):
    """
    Intermediate quantities of :class:`ReferentialCrossAttention` (DualRel eq. 2-6).

    Attributes:
        attention: ``s`` of eq. 2, the plain softmax attention of every query over the tokens, (B, K, N).
        correlation: ``c`` of eq. 5, the referential correlation, (B, K, N) with values in [0, 1];
            ``None`` when references are not used (``c = 1``).
        weights: the rectified weights ``c * s`` that blend the values in eq. 6, (B, K, N)
            (equal to ``attention`` without references).
        aggregated: ``sum_i c_{k,i} s_{k,i} v_i`` of eq. 6, before the residual, LayerNorm and FFN, (B, K, C).
        reference_indices: (B, N_R) long indices of the tokens used as reference points, or ``None``.
    """

    attention: torch.Tensor
    correlation: Optional[torch.Tensor]
    weights: torch.Tensor
    aggregated: torch.Tensor
    reference_indices: Optional[torch.Tensor]


class ReferentialCrossAttention(nn.Module):
    """
    Single-head cross-attention of K queries over N tokens, rectified by referential correlation (DualRel).

    With queries ``f_k`` (the mito filters) and tokens ``x_i`` (the flattened, channel-reduced deepest encoder
    map), DualRel (CVPR 2023) eq. 1-6 read::

        q_k = f_k W^Q,  k_i = x_i W^K,  v_i = x_i W^V                                  (1)
        s_{k,i} = softmax_i(q_k . k_i / sqrt(C))                                      (2)
        S^FR_k = softmax_n(q_k . (x^R_n W^K) / sqrt(C))        (1 x N_R)              (3)
        S^PR_i = softmax_n((x_i W^Q) . (x^R_n W^K) / sqrt(C))  (1 x N_R)              (4)
        c_{k,i} = S^FR_k . S^PR_i                                                     (5)
        a_k = sum_i c_{k,i} s_{k,i} v_i                                                (6)

    ``W^Q, W^K, W^V`` are bias-free C x C matrices (the paper lists no bias and no output projection; none is
    added). ``X^R`` are ``N_R = num_references`` reference points taken from the token sequence itself: the
    paper defers their choice to a supplement that is not available, so (docs/design.md section 4) they are selected
    per image with :func:`mito_monai.losses.select_agents` (greedy most-orthogonal tokens by default, the same
    selection as R4MITO's agents; selection carries no gradient, the gathered reference tokens do).
    With fewer tokens than ``num_references`` every token is a reference.

    Where ``c`` enters: the paper multiplies the *already normalised* softmax weights ``s`` (eq. 2 is a
    softmax over the hw tokens) by ``c`` in eq. 6 and does not renormalise afterwards; this module does
    exactly that. As ``c`` is the dot product of two probability vectors, ``0 <= c <= 1``, so the rectified
    weights ``c * s`` sum to at most 1 over the tokens and ``a_k`` is a down-weighted blend of values.

    The output composition (the paper only says it follows the Transformer's cross-attention; ours, see
    docs/design.md section 4) is a post-norm Transformer decoder layer without self-attention::

        h_k     = LayerNorm_1(f_k + Dropout(a_k))
        out_k   = LayerNorm_2(h_k + FFN(h_k))
        FFN     = MONAI MLPBlock: Linear(C, H) - GELU - Dropout - Linear(H, C) - Dropout

    With ``use_references=False`` the block is plain cross-attention (``c = 1``), the paper's "w/o ref."
    ablation (Table 4).

    Args:
        dim: channel number C of queries and tokens (the scaling uses ``sqrt(C)``).
        num_references: number of reference points N_R (ignored by ``reference_strategy="all"``).
        use_references: rectify the attention with referential correlation (False: plain cross-attention).
        reference_strategy: how reference points are chosen from the tokens, one of
            :data:`mito_monai.losses.AGENT_STRATEGIES` (``"orthogonal"``, ``"random"``, ``"all"``).
        ffn_hidden: hidden width H of the FFN; ``None`` means ``4 * dim``.
        dropout: dropout probability in [0, 1) on the attention output and inside the FFN.

    Example::

        >>> block = ReferentialCrossAttention(dim=32, num_references=8)
        >>> out, maps = block(torch.randn(2, 12, 32), torch.randn(2, 64, 32), return_attention=True)
        >>> out.shape, maps.weights.shape
        (torch.Size([2, 12, 32]), torch.Size([2, 12, 64]))
    """

    def __init__(
        self,
        dim: int,
        num_references: int = 16,
        use_references: bool = True,
        reference_strategy: str = "orthogonal",
        ffn_hidden: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("num_references", num_references)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not isinstance(use_references, bool):
            raise TypeError(f"use_references must be a bool, got {type(use_references).__name__}.")
        if reference_strategy not in AGENT_STRATEGIES:
            raise ValueError(f"reference_strategy must be one of {AGENT_STRATEGIES}, got {reference_strategy!r}.")
        if ffn_hidden is None:
            ffn_hidden = 4 * dim
        if isinstance(ffn_hidden, bool) or not isinstance(ffn_hidden, int) or ffn_hidden < 1:
            raise ValueError(f"ffn_hidden must be None or a positive integer, got {ffn_hidden!r}.")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}.")

        self.dim = dim
        self.num_references = num_references
        self.use_references = use_references
        self.reference_strategy = reference_strategy
        self.scale = 1.0 / math.sqrt(dim)

        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.attn_drop = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = MLPBlock(hidden_size=dim, mlp_dim=ffn_hidden, dropout_rate=dropout, act="GELU", dropout_mode="vit")
        self.norm2 = nn.LayerNorm(dim)

    @torch.jit.unused
    def forward(
        self, queries: torch.Tensor, tokens: torch.Tensor, return_attention: bool = False
    ) -> Union[torch.Tensor, tuple[torch.Tensor, ReferentialAttentionMaps]]:
        """
        Args:
            queries: (B, K, C) query embeddings (DualRel's mito filters, expanded over the batch).
            tokens: (B, N, C) token sequence (keys and values, and the pool the references are chosen from).
            return_attention: also return the intermediate maps as :class:`ReferentialAttentionMaps`.

        Returns:
            mito features (B, K, C), or ``(features, maps)`` when ``return_attention`` is True.

        Raises:
            TypeError / ValueError: when the inputs are not floating (B, K, C) / (B, N, C) tensors with
                C = ``dim`` and the same batch size.
        """
        self._check_inputs(queries, tokens)
        out, attention, correlation, weights, aggregated, reference_indices = self._attend(queries, tokens)
        if return_attention:
            return out, ReferentialAttentionMaps(attention, correlation, weights, aggregated, reference_indices)
        return out

    def attend(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """
        ``forward(queries, tokens)`` without the input checks, TorchScript-compatible (``torch.jit.script``
        compiles this path; ``forward`` itself is left to Python). Only the ``"orthogonal"`` and ``"all"``
        reference strategies can be scripted.

        Args:
            queries: (B, K, C). tokens: (B, N, C).

        Returns:
            mito features (B, K, C).
        """
        return self._attend(queries, tokens)[0]

    def _attend(
        self, queries: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[
        torch.Tensor, torch.Tensor, Optional[torch.Tensor], torch.Tensor, torch.Tensor, Optional[torch.Tensor]
    ]:
        """Eq. 1-6 and the residual/FFN: ``(out, attention, correlation, weights, aggregated, reference_indices)``."""
        q = self.to_q(queries)  # (B, K, C)
        k = self.to_k(tokens)  # (B, N, C)
        v = self.to_v(tokens)  # (B, N, C)
        attention = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * self.scale, dim=-1)  # eq. 2, (B, K, N)

        correlation: Optional[torch.Tensor] = None
        reference_indices: Optional[torch.Tensor] = None
        if self.use_references:
            # reference points X^R: tokens chosen per image (no gradient through the choice itself)
            reference_indices = self._reference_indices(tokens)
            references = _gather_tokens(tokens, reference_indices)  # (B, N_R, C)
            ref_keys = self.to_k(references)  # X^R W^K, (B, N_R, C)
            s_fr = torch.softmax(torch.bmm(q, ref_keys.transpose(1, 2)) * self.scale, dim=-1)  # eq. 3, (B, K, N_R)
            pixel_q = self.to_q(tokens)  # x_i W^Q, (B, N, C)
            s_pr = torch.softmax(torch.bmm(pixel_q, ref_keys.transpose(1, 2)) * self.scale, dim=-1)  # eq. 4
            correlation = torch.bmm(s_fr, s_pr.transpose(1, 2))  # eq. 5, (B, K, N)
            weights = correlation * attention  # eq. 6: c multiplies the normalised s, no renormalisation
        else:
            weights = attention
        aggregated = torch.bmm(weights, v)  # eq. 6, (B, K, C)

        hidden = self.norm1(queries + self.attn_drop(aggregated))
        out = self.norm2(hidden + self.ffn(hidden))
        return out, attention, correlation, weights, aggregated, reference_indices

    def _reference_indices(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N_R) flat token indices of the reference points, :func:`mito_monai.losses.select_agents`' choice."""
        if torch.jit.is_scripting():
            num_tokens = tokens.shape[1]
            if self.reference_strategy == "all":
                return torch.arange(num_tokens, device=tokens.device).expand(tokens.shape[0], num_tokens).contiguous()
            if self.reference_strategy != "orthogonal":
                raise RuntimeError("a scripted ReferentialCrossAttention supports the 'orthogonal' and 'all' strategies.")
            return orthogonal_indices(tokens.transpose(1, 2), min(self.num_references, num_tokens))
        return self._select_references(tokens)

    @torch.jit.unused
    def _select_references(self, tokens: torch.Tensor) -> torch.Tensor:
        return select_agents(tokens.transpose(1, 2), self.num_references, strategy=self.reference_strategy)[1]

    def _check_inputs(self, queries: torch.Tensor, tokens: torch.Tensor) -> None:
        for name, value, letter in (("queries", queries, "K"), ("tokens", tokens, "N")):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")
            if not value.is_floating_point():
                raise TypeError(f"{name} must be a floating point tensor, got dtype {value.dtype}.")
            if value.dim() != 3 or value.shape[2] != self.dim or value.shape[1] < 1:
                raise ValueError(
                    f"{name} must have shape (B, {letter}, C) with C = dim = {self.dim}, got {tuple(value.shape)}."
                )
        if queries.shape[0] != tokens.shape[0]:
            raise ValueError(
                f"queries and tokens must have the same batch size, got {queries.shape[0]} and {tokens.shape[0]}."
            )


def _gather_tokens(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(B, N, C) tokens at (B, K) indices -> (B, K, C) (:func:`mito_monai.losses.gather_agents` on a sequence)."""
    return tokens.gather(1, indices.unsqueeze(-1).expand(-1, -1, tokens.shape[2]))
