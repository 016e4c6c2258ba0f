"""Label-free scores of a segmentation model on unlabelled images, for model selection.

None of these reads a label. Each is computed from the foreground probability ``p`` (B, 1, H, W) of the
model on an image and, for the agreement scores, ``q``: the probability of the same model on a
transformed copy of the image, mapped back to the image's geometry.

- ``entropy``: the mean binary entropy ``-p log p - (1 - p) log(1 - p)`` in nats (lower = more confident).
  A model that collapses to background is confident too, so entropy alone can pick a collapsed model.
- ``agreement``: the foreground Dice of the masks ``p >= 0.5`` and ``q >= 0.5`` over the batch
  (higher = more stable under the transform). Two empty masks score 0, not 1, so that a model that
  predicts no mitochondria is never preferred for its (trivial) stability.
- ``foreground_fraction``: the fraction of pixels with ``p >= 0.5``, reported to spot a collapse.
"""

from __future__ import annotations

import torch

__all__ = ["LABEL_FREE_CRITERIA", "LabelFreeScores", "binary_entropy", "mask_agreement"]

#: criterion name -> whether larger values are better
LABEL_FREE_CRITERIA: dict[str, bool] = {"agreement": True, "entropy": False}


def _check_prob(p: torch.Tensor, name: str) -> None:
    if not isinstance(p, torch.Tensor) or p.ndim != 4 or p.shape[1] != 1:
        shape = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
        raise ValueError(f"{name} must be a foreground probability of shape (B, 1, H, W), got {shape}.")


def binary_entropy(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-pixel binary entropy (nats) of ``p`` (B, 1, H, W) -> same shape, float32."""
    _check_prob(p, "p")
    p = p.float().clamp(eps, 1.0 - eps)
    return -(p * p.log() + (1.0 - p) * (1.0 - p).log())


def mask_agreement(p: torch.Tensor, q: torch.Tensor, threshold: float = 0.5) -> tuple[float, float]:
    """``(2 |A & B|, |A| + |B|)`` of the masks ``p >= threshold`` and ``q >= threshold``: a Dice numerator
    and denominator, to be summed over batches before dividing."""
    _check_prob(p, "p")
    _check_prob(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}.")
    a, b = p >= threshold, q >= threshold
    return 2.0 * float((a & b).sum()), float(a.sum() + b.sum())


class LabelFreeScores:
    """Accumulate the label-free scores over batches; :meth:`compute` returns them as a dict.

    Example::

        scores = LabelFreeScores()
        for p, q in batches:  # each (B, 1, H, W)
            scores.update(p, q)
        scores.compute()  # {"entropy": ..., "agreement": ..., "foreground_fraction": ...}
    """

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self._entropy = 0.0
        self._fg = 0.0
        self._pixels = 0
        self._inter = 0.0
        self._total = 0.0
        self._paired = False

    def update(self, p: torch.Tensor, q: torch.Tensor | None = None) -> None:
        """Add a batch: ``p`` the probability on the images, ``q`` (optional) on their transformed copies."""
        self._entropy += float(binary_entropy(p).sum())
        self._fg += float((p >= self.threshold).sum())
        self._pixels += p.numel()
        if q is not None:
            inter, total = mask_agreement(p, q, self.threshold)
            self._inter += inter
            self._total += total
            self._paired = True

    def compute(self) -> dict[str, float]:
        if self._pixels == 0:
            raise RuntimeError("LabelFreeScores.compute() before any update().")
        out = {"entropy": self._entropy / self._pixels, "foreground_fraction": self._fg / self._pixels}
        if self._paired:
            out["agreement"] = self._inter / self._total if self._total > 0 else 0.0
        return out
