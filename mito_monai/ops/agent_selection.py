"""Agent selection: K representative pixels of a feature map (R4MITO's agents, DualRel's reference points).

docs/design.md section 3.3, step 1. A shared building block below ``mito_monai.networks`` (DualRel's referential
cross-attention picks its reference points with it) and ``mito_monai.losses`` (R4MITO's agent losses).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "AGENT_STRATEGIES",
    "check_feature_map",
    "gather_agents",
    "no_autocast",
    "orthogonal_indices",
    "select_agents",
]

AGENT_STRATEGIES = ("orthogonal", "random", "all")
# pixels whose feature norm is at most this fraction of the largest norm in their map count as "zero" vectors
_DEGENERATE_NORM = 1e-6
_FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)


def no_autocast(device: torch.device) -> torch.autocast:
    """A context that switches autocast off on ``device``, so the maths runs in float32."""
    return torch.autocast(device_type=device.type, enabled=False)


def check_feature_map(name: str, features: torch.Tensor) -> None:
    """Raise when ``features`` is not a floating (B, C, *spatial) tensor with 1 to 3 spatial dims."""
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(features).__name__}.")
    if features.dim() not in (3, 4, 5):
        raise ValueError(
            f"{name} must have shape (B, C, *spatial) with 1 to 3 spatial dims, got {tuple(features.shape)}."
        )
    if not features.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got dtype {features.dtype}.")


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")



def orthogonal_indices(features: torch.Tensor, num_agents: int) -> torch.Tensor:
    """
    Greedy most-orthogonal selection (the ``"orthogonal"`` strategy of :func:`select_agents`), without checks.

    TorchScript-compatible (``torch.jit.script``), so that networks that choose reference points this way
    (DualRel's referential cross-attention) can be exported; it never builds a graph.

    Args:
        features: (B, C, *spatial) feature map, any floating dtype (the maths runs in float32).
        num_agents: K, at most the number of pixels.

    Returns:
        (B, K) long flat pixel indices.
    """
    with torch.no_grad():
        indices = _orthogonal_indices(features.detach().float().flatten(2), num_agents)
    return indices


def _orthogonal_indices(
    flat: torch.Tensor, num_agents: int, degenerate_norm: float = _DEGENERATE_NORM, tiny: float = _FLOAT32_TINY
) -> torch.Tensor:
    """:func:`orthogonal_indices` on a float32 (B, C, N) map (the constants are arguments for TorchScript)."""
    # (B, C, N): (B, 1, C) @ (B, C, N) is a fast batched product
    batch = flat.shape[0]
    norms = torch.linalg.vector_norm(flat, dim=1)  # (B, N)
    unit = (flat / norms.clamp_min(tiny).unsqueeze(1)).contiguous()
    rows = torch.arange(batch, device=flat.device)
    # running[b, i] = largest |cos| between pixel i and the agents chosen so far. Zero vectors (e.g. dead ReLU
    # pixels) carry no direction and would look perfectly orthogonal: they start at 2 (> any |cos|) so they
    # are only taken once every other pixel is; chosen pixels are set to +inf.
    degenerate = norms <= degenerate_norm * norms.amax(dim=1, keepdim=True)
    running = torch.where(degenerate, torch.full_like(norms, 2.0), torch.zeros_like(norms))
    indices = torch.empty(batch, num_agents, dtype=torch.long, device=flat.device)
    current = norms.argmax(dim=1)  # first agent: the pixel with the largest feature norm (first one on ties)
    for j in range(num_agents):
        if j > 0:
            current = running.argmin(dim=1)  # first index among ties
        indices[:, j] = current
        if j == num_agents - 1:
            break
        agent = unit[rows, :, current]  # (B, C)
        cosine = torch.bmm(agent.unsqueeze(1), unit).squeeze(1).abs()  # (B, N)
        running = torch.maximum(running, cosine)
        running[rows, current] = float("inf")
    return indices


def select_agents(
    features: torch.Tensor,
    num_agents: int,
    strategy: str = "orthogonal",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Select K agents (representative pixels) per image of a feature map.

    Strategies:

    - ``"orthogonal"`` (default, R4MITO's "TopK" row of Table 5, RankMatch's lineage): L2-normalise the
      features; the first agent is the pixel with the largest feature norm (the first such pixel on ties; with
      features already L2-normalised, the default of the losses, every norm is 1 up to rounding, so this first
      pick is arbitrary though deterministic and only the greedy steps after it matter);
      then repeatedly add the pixel whose largest |cosine| to the agents already chosen is smallest (the
      first such pixel on ties). Vectorised over the batch: K iterations of an O(N C) update of a running
      "largest |cos|" vector. Pixels with a (near) zero feature vector are taken last.
    - ``"random"``: K distinct pixels drawn uniformly (``generator`` makes it reproducible).
    - ``"all"``: every pixel, in raster order; ``num_agents`` is ignored. The correlation tensor is then
      (B, N, N): use it on small (pooled) maps only.

    With fewer pixels than agents, K is the number of pixels (every pixel becomes an agent).

    Args:
        features: (B, C, *spatial) feature map, normally the weak view's; selection never builds a graph.
        num_agents: number of agents K wanted.
        strategy: one of ``"orthogonal"``, ``"random"``, ``"all"``.
        generator: optional ``torch.Generator`` for ``"random"`` (its device is used to draw the numbers).

    Returns:
        ``(agents, indices)``: agents (B, K, C), the feature vectors at the chosen pixels gathered from
        ``features`` (same dtype, differentiable if ``features`` is), and indices (B, K) long, flat indices
        into the spatial positions (row-major).
    """
    check_feature_map("features", features)
    _check_positive_int("num_agents", num_agents)
    if strategy not in AGENT_STRATEGIES:
        raise ValueError(f"strategy must be one of {AGENT_STRATEGIES}, got {strategy!r}.")
    batch = features.shape[0]
    num_pixels = math.prod(features.shape[2:])
    k = min(num_agents, num_pixels)
    if strategy == "all":
        indices = torch.arange(num_pixels, device=features.device).expand(batch, num_pixels).contiguous()
    elif strategy == "random":
        draw_device = generator.device if generator is not None else features.device
        noise = torch.rand(batch, num_pixels, generator=generator, device=draw_device)
        indices = noise.topk(k, dim=1).indices.to(features.device)
    else:
        with no_autocast(features.device):
            indices = orthogonal_indices(features, k)
    return gather_agents(features, indices), indices


def gather_agents(features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """
    Feature vectors of ``features`` at flat pixel ``indices`` (e.g. the strong view at the weak view's agents).

    Args:
        features: (B, C, *spatial).
        indices: (B, K) long flat spatial indices, as returned by :func:`select_agents`.

    Returns:
        (B, K, C), same dtype as ``features``, differentiable with respect to it.
    """
    check_feature_map("features", features)
    if indices.dim() != 2 or indices.shape[0] != features.shape[0]:
        raise ValueError(
            f"indices must have shape (B, K) with B = {features.shape[0]}, got {tuple(indices.shape)}."
        )
    flat = features.flatten(2)  # (B, C, N)
    gathered = flat.gather(2, indices.long().unsqueeze(1).expand(-1, flat.shape[1], -1))
    return gathered.transpose(1, 2)
