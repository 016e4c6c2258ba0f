"""An inferer wrapper that runs any MONAI inferer under autocast on the input's device (CPU included)."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer

__all__ = ["AutocastInferer"]


class AutocastInferer(Inferer):
    """Run ``inferer(inputs, network)`` under ``torch.autocast`` for the device of ``inputs``.

    MONAI's ``SupervisedEvaluator(amp=True)`` enters ``torch.autocast("cuda")``, which does nothing on a
    CPU; this wrapper makes bfloat16 inference work on CPUs with AVX-512 BF16 / AMX (about 2-4x faster for
    the U-Net here) as well as on GPUs. The output is returned as float32, so metrics and thresholds see
    the same dtype as without autocast.

    Args:
        inferer: the wrapped inferer (e.g. ``monai.inferers.SlidingWindowInferer``); ``None`` calls the
            network directly.
        enabled: ``False`` runs the wrapped inferer unchanged (float32).
        dtype: the autocast dtype (a ``torch.dtype`` or its name, e.g. ``"bfloat16"``).

    Shapes: as the wrapped inferer, e.g. (B, 1, H, W) in, (B, 2, H, W) logits out.
    """

    def __init__(self, inferer: Inferer | None = None, enabled: bool = True, dtype: torch.dtype | str = torch.bfloat16) -> None:
        super().__init__()
        if isinstance(dtype, str):
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ValueError(f"dtype must name a torch dtype such as 'bfloat16', got {dtype!r}.")
            dtype = getattr(torch, dtype)
        if inferer is not None and not callable(inferer):
            raise TypeError(f"inferer must be callable, got {type(inferer).__name__}.")
        self.inferer = inferer
        self.enabled = bool(enabled)
        self.dtype = dtype

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(inputs.device.type, dtype=self.dtype, enabled=self.enabled):
            out = self.inferer(inputs, network, *args, **kwargs) if self.inferer is not None else network(inputs, *args, **kwargs)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            return out.float()
        return out
