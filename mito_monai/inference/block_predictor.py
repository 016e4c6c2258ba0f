"""The network applied to blocks of a stack: weights, sliding windows, normalisation, precision and threshold."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data.utils import compute_importance_map
from monai.inferers import Inferer
from torch import nn

from mito_monai.inference.block_plan import Block, fitted_window, window_starts
from mito_monai.runtime.checkpoint_files import load_checkpoint
from mito_monai.runtime.precision import AUTO, Precision, as_precision
from mito_monai.transforms import MatchHistogram, NormalizePerSlice
from mito_monai.transforms.resolution import check_scale, resize_slices, scaled_size

__all__ = ["BlockPredictor", "normalize_slice"]

_NORMALIZE = NormalizePerSlice()


def normalize_slice(image: np.ndarray) -> np.ndarray:
    """Min-max normalise one 2D slice to [0, 1] in float32; a constant slice becomes zeros.

    The same per-slice normalisation as the training transforms
    (:class:`mito_monai.transforms.NormalizePerSliced`).
    """
    image = np.asarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        raise ValueError(f"slice has {int((~np.isfinite(image)).sum())} NaN/Inf pixels.")
    return np.asarray(_NORMALIZE(image), dtype=np.float32)


class BlockPredictor:
    """Foreground probabilities of blocks of a (Z, Y, X) stack with a 2D network, window by window.

    Sliding windows (Gaussian-weighted overlap, MONAI's weighting) lie on one lattice fixed by the whole slice, so
    a block that reads its core plus a halo of one window gets, for its core, exactly what the whole slice would.
    With ``max_window`` the windows grow beyond ``roi_size`` (the network is fully convolutional): one window per
    whole slice when the slice fits in ``max_window``, else the fewest windows of at most ``max_window`` that keep
    the configured window's overlap in pixels (:func:`~mito_monai.inference.block_plan.fitted_window`). Batches hold
    about ``sw_batch_size`` windows of ``roi_size`` worth of pixels. The foreground probability is softmax
    channel 1 of 2-class logits, or the sigmoid of 1-channel logits.

    This is what a block task holds (and what a Dask worker receives): the network and its settings, nothing of
    the run's input or outputs.

    Args:
        network: a 2D network giving (B, 2, H, W) or (B, 1, H, W) logits (or a tuple whose first entry is).
        inferer: a :class:`monai.inferers.SlidingWindowInferer` whose ``roi_size``, ``sw_batch_size``,
            ``overlap``, ``mode`` and ``sigma_scale`` are used; defaults to ``roi_size``, 4, 0.5, gaussian.
        roi_size: window size when no inferer is given (the papers use 512 x 512).
        device: where the network runs.
        threshold: foreground probability at or above which a pixel is mitochondria.
        amp: ``"auto"`` (autocast where the hardware computes it natively: bfloat16 on CPUs with AVX-512 BF16
            / AMX and on CUDA with bfloat16, float16 on older CUDA, float32 elsewhere; see
            :func:`mito_monai.runtime.resolve_precision`), true/false to force it, or a resolved ``Precision``.
        checkpoint: optional path of a ``model.pt`` (state dict, loaded with ``weights_only=True``).
        channels_last: channels-last memory format: ``"auto"`` (with autocast) or true/false.
        max_window: largest window side the windows may grow to (None: always ``roi_size``); rounded to
            the network's ``divisor`` (its size divisor) when it has one.
        scale: the input's pixel size / the network's (e.g. 8 nm / 4.6 nm for a MitoEM stack and a model trained
            on VNC III): whole slices are resized by it (:func:`~mito_monai.transforms.resize_slices`) before the
            windows, and the probabilities resized back to the slice's size, as
            :class:`~mito_monai.inference.RescalingInferer` does; blocks must then hold whole slices (the
            :class:`~mito_monai.inference.StackSegmenter` plans them so). ``None`` (default) or 1: no rescaling.
        histogram_reference: reference quantiles (anything :class:`~mito_monai.transforms.MatchHistogram` takes,
            e.g. the ``histogram_reference.json`` of an r4mito run with ``target_histogram_match``): every
            normalised whole slice is matched to them (:meth:`match_block`) before the network; ``None``
            (default): no matching.
    """

    def __init__(
        self,
        network: nn.Module,
        inferer: Inferer | None = None,
        roi_size: Sequence[int] = (512, 512),
        device: str | torch.device = "cpu",
        threshold: float = 0.5,
        amp: Precision | bool | str = AUTO,
        checkpoint: str | os.PathLike | None = None,
        channels_last: bool | str = AUTO,
        max_window: int | None = None,
        scale: float | None = None,
        histogram_reference: Any = None,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        if checkpoint is not None:
            state = load_checkpoint(checkpoint, map_location=self.device)
            if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
                state = state["model"]
            try:
                self.network.load_state_dict(state)
            except RuntimeError as e:
                raise ValueError(
                    f"{checkpoint} does not fit this network (were the channels changed?): {str(e).splitlines()[0]}"
                ) from e
        if inferer is not None:
            if not hasattr(inferer, "roi_size"):
                raise ValueError(f"inferer must be a monai.inferers.SlidingWindowInferer, got {type(inferer).__name__}.")
            roi_size = inferer.roi_size
            self.sw_batch_size = int(inferer.sw_batch_size)
            self.overlap = float(np.max(inferer.overlap))
            self.mode, self.sigma_scale = str(getattr(inferer.mode, "value", inferer.mode)), inferer.sigma_scale
        else:
            self.sw_batch_size, self.overlap, self.mode, self.sigma_scale = 4, 0.5, "gaussian", 0.125
        self.roi_size = tuple(int(r) for r in roi_size)
        if len(self.roi_size) != 2 or min(self.roi_size) < 1:
            raise ValueError(f"roi_size must be two positive sizes (Y, X), got {roi_size}.")
        if max_window is not None and int(max_window) < max(self.roi_size):
            raise ValueError(f"max_window ({max_window}) must be at least the window {self.roi_size}.")
        self.max_window = None if max_window is None else int(max_window)
        self.multiple = int(getattr(network, "divisor", 1))
        self.threshold = threshold
        self.precision = as_precision(amp, AUTO, channels_last, self.device)
        self.amp, self.amp_dtype, self.channels_last = self.precision.amp, self.precision.dtype, self.precision.channels_last
        if self.channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        self._weights: dict[tuple[int, int], torch.Tensor] = {}
        self.scale = check_scale(scale)
        self.matcher = None if histogram_reference is None else MatchHistogram(histogram_reference)

    def fingerprint(self) -> dict[str, str]:
        """What a resumed run must share with the interrupted one besides the block settings: the weights
        (``checkpoint``: sha256 of the state dict's names, dtypes, shapes and values), the ``network``
        (class and a sha256 of its printed structure) and the ``precision`` (autocast dtype, memory format)."""
        digest = hashlib.sha256()
        for name, tensor in self.network.state_dict().items():
            t = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        structure = hashlib.sha256(repr(self.network).encode()).hexdigest()[:12]
        precision = self.precision.name + (" autocast" if self.amp else "") + (" channels-last" if self.channels_last else "")
        out = {
            "checkpoint": "sha256:" + digest.hexdigest()[:16],
            "network": f"{type(self.network).__name__} {structure}",
            "precision": precision,
        }
        if self.rescaling:  # only then, so that records of runs without rescaling still resume
            out["scale"] = repr(self.scale)
        if self.matcher is not None:  # only then, so that records of runs without matching still resume
            reference = np.ascontiguousarray(self.matcher.reference_quantiles, dtype=np.float64)
            out["histogram_reference"] = "sha256:" + hashlib.sha256(reference.tobytes()).hexdigest()[:16]
        return out

    @property
    def rescaling(self) -> bool:
        """Whether slices are resized by ``scale`` before the network (``scale`` set and not 1)."""
        return self.scale is not None and self.scale != 1.0

    # the network on windows -------------------------------------------------------------------
    def _importance(self, window: tuple[int, int]) -> torch.Tensor:
        if window not in self._weights:
            self._weights[window] = compute_importance_map(
                window, mode=self.mode, sigma_scale=self.sigma_scale, device=self.device
            ).float()
        return self._weights[window]

    def windows(self, full: Sequence[int]) -> tuple[tuple[int, int], tuple[float, float]]:
        """The (y, x) window size and overlap used on whole slices of size ``full`` (Y, X)."""
        fits = [fitted_window(int(n), r, self.overlap, self.max_window, self.multiple) for n, r in zip(full, self.roi_size)]
        return (fits[0][0], fits[1][0]), (fits[0][1], fits[1][1])

    @torch.no_grad()
    def forward_windows(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, C, h, w) float32 of a batch of normalised windows (B, 1, h, w), under the configured precision."""
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype if self.amp else torch.float32, enabled=self.amp):
            logits = self.network(x)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        return logits.float()

    def predict_region(self, image: np.ndarray, origin: Sequence[int], core: Sequence[slice], full: Sequence[int]) -> np.ndarray:
        """Foreground probability (Z, cy, cx) float32 of the ``core`` (y, x) box of normalised slices.

        Args:
            image: (Z, H, W) normalised slices, the region ``origin`` (y0, x0) .. of the whole slice.
            origin: global (y, x) position of ``image[:, 0, 0]``.
            core: global (y, x) slices to predict; every window touching them must lie inside ``image``.
            full: (Y, X) size of the whole slice (fixes the window lattice).

        With ``scale``, ``image`` must be the whole slices (and ``core`` all of them): they are resized by
        ``scale``, predicted, and the probabilities resized back to (Y, X).
        """
        if not self.rescaling:
            return self._predict_region(image, origin, core, full)
        full = tuple(int(n) for n in full)
        whole = tuple(origin) == (0, 0) and tuple(image.shape[1:]) == full
        if not (whole and all(c.indices(n)[:2] == (0, n) for c, n in zip(core, full))):
            raise ValueError(
                f"with scale {self.scale} a block must hold whole slices {full}, got a region {image.shape[1:]} "
                f"at {tuple(origin)}."
            )
        size = scaled_size(full, self.scale)
        zoomed = resize_slices(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), size).numpy()
        prob = self._predict_region(zoomed, (0, 0), (slice(0, size[0]), slice(0, size[1])), size)
        return resize_slices(torch.from_numpy(prob), full).numpy().clip(0.0, 1.0).astype(np.float32)

    def _predict_region(self, image: np.ndarray, origin: Sequence[int], core: Sequence[slice], full: Sequence[int]) -> np.ndarray:
        """:meth:`predict_region` at the network's pixel size (no rescaling)."""
        window, overlap = self.windows(full)
        pads, starts, offset = [], [], []
        for axis in range(2):
            length, roi = int(full[axis]), window[axis]
            if length < roi:  # the whole axis is in the region: reflect-pad it to one window, like MONAI
                before = (roi - length) // 2
                pads.append((before, roi - length - before))
                starts.append([-before])
            else:
                pads.append((0, 0))
                c = core[axis]
                starts.append([s for s in window_starts(length, roi, overlap[axis]) if s < c.stop and s + roi > c.start])
            offset.append(int(origin[axis]) - pads[-1][0])
        if any(p != (0, 0) for p in pads):
            image = np.pad(image, [(0, 0), *pads], mode="reflect" if min(image.shape[1:]) > 1 else "edge")
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[:, None]
        weights = self._importance(window)
        ry, rx = window
        windows = [(z, sy - offset[0], sx - offset[1]) for z in range(x.shape[0]) for sy in starts[0] for sx in starts[1]]
        per_batch = max(1, self.sw_batch_size * self.roi_size[0] * self.roi_size[1] // (ry * rx))
        acc = wsum = None
        for i in range(0, len(windows), per_batch):
            batch = windows[i : i + per_batch]
            logits = self.forward_windows(torch.cat([x[z : z + 1, :, iy : iy + ry, ix : ix + rx] for z, iy, ix in batch]))
            if acc is None:
                acc = torch.zeros((x.shape[0], logits.shape[1], *x.shape[2:]), device=self.device)
                wsum = torch.zeros(x.shape[2:], device=self.device)
                counted = set()
            for (z, iy, ix), out in zip(batch, logits):
                acc[z, :, iy : iy + ry, ix : ix + rx] += out * weights
                if (iy, ix) not in counted:
                    wsum[iy : iy + ry, ix : ix + rx] += weights
                    counted.add((iy, ix))
        cy = slice(core[0].start - offset[0], core[0].stop - offset[0])
        cx = slice(core[1].start - offset[1], core[1].stop - offset[1])
        logits = acc[:, :, cy, cx] / wsum[cy, cx]
        prob = torch.softmax(logits, dim=1)[:, 1] if logits.shape[1] > 1 else torch.sigmoid(logits[:, 0])
        return prob.cpu().numpy().astype(np.float32)

    def predict_slice(self, image: np.ndarray) -> np.ndarray:
        """Foreground probability (Y, X) float32 of one raw 2D slice (Y, X)."""
        if image.ndim != 2:
            raise ValueError(f"expected one 2D slice (Y, X), got shape {image.shape}.")
        full = image.shape
        norm = normalize_slice(image)[None]
        if self.matcher is not None:
            norm = self.match_block(norm, self.slice_quantiles(norm))
        return self.predict_region(norm, (0, 0), (slice(0, full[0]), slice(0, full[1])), full)[0]

    def slice_quantiles(self, norm: np.ndarray) -> np.ndarray | None:
        """Per-slice quantiles (Z, Q) of whole normalised slices (Z, Y, X) at the histogram reference's levels;
        ``None`` without a reference."""
        if self.matcher is None:
            return None
        return np.stack([self.matcher.image_quantiles(s) for s in norm])

    def match_block(self, norm: np.ndarray, quantiles: np.ndarray | None) -> np.ndarray:
        """Match each normalised slice of a read box (Z, H, W) to the histogram reference with the quantiles
        (Z, Q) of its whole slice (:meth:`slice_quantiles`); unchanged without a reference."""
        if self.matcher is None:
            return norm
        return np.stack([self.matcher(s, image_quantiles=q) for s, q in zip(norm, quantiles)]).astype(np.float32)

    @staticmethod
    def normalize_block(raw: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Min-max normalise a (Z, H, W) read box with the per-slice ``low``/``high`` of the whole slices."""
        raw = np.asarray(raw)
        raw = raw.astype(np.float64 if raw.dtype == np.float64 else np.float32, copy=False)
        span = high - low
        norm = (raw - low[:, None, None]) / np.where(span > 0, span, 1.0)[:, None, None]
        return norm.astype(np.float32)

    def predict_normalized_block(self, norm: np.ndarray, block: Block, full: Sequence[int]) -> np.ndarray:
        """Probabilities of ``block.core`` from its normalised read box (Z, H, W)."""
        origin = (block.read[1].start, block.read[2].start)
        return self.predict_region(norm, origin, block.core[1:], full)

    def predict_block(self, raw: np.ndarray, block: Block, low: np.ndarray, high: np.ndarray, full: Sequence[int]) -> np.ndarray:
        """Probabilities of ``block.core`` from its ``raw`` read box (Z, H, W), normalised with the
        per-slice ``low``/``high`` of the whole slices (one entry per slice of the block)."""
        return self.predict_normalized_block(self.normalize_block(raw, low, high), block, full)
