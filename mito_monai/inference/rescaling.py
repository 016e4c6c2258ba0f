"""An inferer wrapper that runs any inferer at another pixel size and answers at the input's size."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer

from mito_monai.transforms.resolution import check_scale, resize_slices, scaled_size

__all__ = ["RescalingInferer", "probabilities_to_logits"]

_EPS = 1e-12


def probabilities_to_logits(prob: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax (C > 1 channels) or sigmoid (1 channel) is ``prob`` (B, C, H, W): ``log p`` or
    ``logit p``, with ``p`` clamped to [1e-12, 1 - 1e-12]."""
    p = prob.clamp(_EPS, 1.0 - _EPS)
    return torch.log(p) if p.shape[1] > 1 else torch.log(p) - torch.log1p(-p)


class RescalingInferer(Inferer):
    """Run ``inferer`` on the input rescaled in-plane by ``scale`` and give back logits at the input's size.

    For a network trained at another pixel size: ``scale`` = the input's pixel size / the network's (e.g. a
    Lucchi++ slice at 5 nm for a network trained at 4.6 nm: 1.087). The input (B, C, H, W) is resized to
    (B, C, round(H * scale), round(W * scale)) (:func:`~mito_monai.transforms.resize_slices`: area averaging
    when shrinking, bilinear when enlarging), ``inferer`` runs on it, and its output is mapped back to (H, W):
    the probabilities (softmax over channels, or the sigmoid of one channel) are resized and returned as logits
    (``log p``, or ``logit p`` for one channel; :func:`probabilities_to_logits`), so that a softmax or a
    threshold downstream sees the probabilities mapped back, and metrics compare them with the labels at the
    input's (native) size. ``scale`` ``None`` or 1 returns ``inferer``'s output itself.

    Args:
        inferer: the wrapped inferer (e.g. a ``SlidingWindowInferer`` or an
            :class:`~mito_monai.inference.AutocastInferer`); ``None`` calls the network directly.
        scale: the input's pixel size / the network's pixel size (> 0); ``None``: no rescaling.

    Shapes: (B, C_in, H, W) in, (B, C_out, H, W) float32 logits out (the inner inferer's output at
    (B, C_out, round(H * scale), round(W * scale)), mapped back).
    """

    def __init__(self, inferer: Inferer | None = None, scale: float | None = None) -> None:
        super().__init__()
        if inferer is not None and not callable(inferer):
            raise TypeError(f"inferer must be callable, got {type(inferer).__name__}.")
        self.inferer = inferer
        self.scale = check_scale(scale)

    @property
    def active(self) -> bool:
        """Whether inputs are rescaled (``scale`` is set and not 1)."""
        return self.scale is not None and self.scale != 1.0

    def _run(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        return self.inferer(inputs, network, *args, **kwargs) if self.inferer is not None else network(inputs, *args, **kwargs)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.active:
            return self._run(inputs, network, *args, **kwargs)
        if inputs.ndim != 4:
            raise ValueError(f"RescalingInferer expects (B, C, H, W) inputs, got shape {tuple(inputs.shape)}.")
        size = tuple(inputs.shape[-2:])
        out = self._run(resize_slices(inputs, scaled_size(size, self.scale)), network, *args, **kwargs)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            raise ValueError(f"RescalingInferer expects (B, C, h, w) logits from the inferer, got {type(out).__name__}.")
        out = out.float()
        prob = torch.softmax(out, dim=1) if out.shape[1] > 1 else torch.sigmoid(out)
        return probabilities_to_logits(resize_slices(prob, size))
