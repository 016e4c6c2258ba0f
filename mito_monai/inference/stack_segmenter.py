"""Whole-stack segmentation: slice by slice, window by window, streamed to disk."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from monai.inferers import Inferer, SlidingWindowInferer
from torch import nn

from mito_monai.inference.sources import SliceSource
from mito_monai.transforms import NormalizePerSlice

__all__ = ["StackSegmenter", "normalize_slice", "OUTPUT_SUFFIXES"]

_NORMALIZE = NormalizePerSlice()

#: output format name -> file suffix ("png" writes a folder of PNG slices)
OUTPUT_SUFFIXES = {"tif": ".tif", "tiff": ".tif", "h5": ".h5", "hdf5": ".h5", "nii": ".nii.gz", "png": ""}


def normalize_slice(image: np.ndarray) -> np.ndarray:
    """Min-max normalise one 2D slice to [0, 1] in float32; a constant slice becomes zeros.

    The same per-slice normalisation as the training transforms
    (:class:`mito_monai.transforms.NormalizePerSliced`).
    """
    image = np.asarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        raise ValueError(f"slice has {int((~np.isfinite(image)).sum())} NaN/Inf pixels.")
    return np.asarray(_NORMALIZE(image), dtype=np.float32)


class StackSegmenter:
    """Segment mitochondria in a (Z, Y, X) stack of any size with a 2D network.

    Each slice is normalised, run through a sliding-window inferer (Gaussian-weighted overlap,
    reflect padding, so any slice size works) and its foreground probability (softmax channel 1
    of 2-class logits, or sigmoid of 1-channel logits) is written to disk before the next slice is
    read: peak memory is one slice plus the windows, whatever the number of slices.

    Args:
        network: a 2D network giving (B, 2, H, W) or (B, 1, H, W) logits.
        inferer: defaults to ``SlidingWindowInferer(roi_size, sw_batch_size=4, overlap=0.5,
            mode="gaussian", padding_mode="reflect")``.
        roi_size: window size of the default inferer (the papers use 512 x 512).
        device: where the network runs.
        threshold: foreground probability at or above which a pixel is mitochondria.
        amp: run the network under autocast (bfloat16 on CPU, float16 on CUDA).
        checkpoint: optional path of a ``model.pt`` (state dict, loaded with ``weights_only=True``).
    """

    def __init__(
        self,
        network: nn.Module,
        inferer: Inferer | None = None,
        roi_size: Sequence[int] = (512, 512),
        device: str | torch.device = "cpu",
        threshold: float = 0.5,
        amp: bool = False,
        checkpoint: str | os.PathLike | None = None,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        if checkpoint is not None:
            from mito_monai.handlers.checkpoint import load_checkpoint

            state = load_checkpoint(checkpoint, map_location=self.device)
            if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
                state = state["model"]
            try:
                self.network.load_state_dict(state)
            except RuntimeError as e:
                raise ValueError(
                    f"{checkpoint} does not fit this network (were the channels changed?): {str(e).splitlines()[0]}"
                ) from e
        self.inferer = inferer or SlidingWindowInferer(
            roi_size=tuple(roi_size), sw_batch_size=4, overlap=0.5, mode="gaussian", padding_mode="reflect"
        )
        self.threshold = threshold
        self.amp = amp
        self.logger = logging.getLogger(__name__)

    @torch.no_grad()
    def predict_slice(self, image: np.ndarray) -> np.ndarray:
        """Foreground probability (Y, X) float32 of one raw 2D slice (Y, X)."""
        if image.ndim != 2:
            raise ValueError(f"expected one 2D slice (Y, X), got shape {image.shape}.")
        x = torch.from_numpy(normalize_slice(image))[None, None].to(self.device)
        dtype = torch.bfloat16 if self.device.type == "cpu" else torch.float16
        with torch.autocast(self.device.type, dtype=dtype, enabled=self.amp):
            logits = self.inferer(x, self.network)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        logits = logits.float()
        prob = torch.softmax(logits, dim=1)[:, 1] if logits.shape[1] > 1 else torch.sigmoid(logits[:, 0])
        return prob[0].cpu().numpy().astype(np.float32)

    def run(
        self,
        input_path: str | os.PathLike,
        output_dir: str | os.PathLike,
        key: str | None = None,
        output_format: str = "tif",
        save_probabilities: bool = True,
        save_masks: bool = True,
        preview: bool = True,
        overwrite: bool = False,
    ) -> dict[str, str]:
        """Segment the stack at ``input_path`` and write ``probabilities`` / ``masks`` into ``output_dir``.

        Probabilities are float32 in [0, 1]; masks are uint8 with mitochondria = 255 (0/255 opens
        as black/white in any viewer; readers here binarise by non-zero). ``output_format`` is one of
        ``tif``, ``h5``, ``nii``, ``png`` (PNG cannot hold float32: probabilities are then written as
        uint8 0-255). Existing outputs are never overwritten unless ``overwrite``.

        Returns:
            name -> written path (``probabilities``, ``masks``, ``preview``, ``summary``).
        """
        from mito_monai.data.io import open_volume_writer

        fmt = output_format.lower().lstrip(".")
        if fmt not in OUTPUT_SUFFIXES:
            raise ValueError(f"output_format must be one of {sorted(set(OUTPUT_SUFFIXES))}, got {output_format!r}.")
        if not (save_probabilities or save_masks):
            raise ValueError("nothing to write: save_probabilities and save_masks are both False.")
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        suffix = OUTPUT_SUFFIXES[fmt]
        prob_dtype = np.uint8 if fmt == "png" else np.float32
        outputs = {"probabilities": prob_dtype} if save_probabilities else {}
        if save_masks:
            outputs["masks"] = np.uint8
        with SliceSource(input_path, key=key) as source, ExitStack() as stack:
            shape = source.shape
            middle = shape[0] // 2
            preview_path = output_dir / f"preview_z{middle:04d}.png"
            summary_path = output_dir / "summary.json"
            for extra in ([preview_path] if preview else []) + [summary_path]:
                if extra.exists() and not overwrite:
                    raise FileExistsError(f"{extra} exists; pass overwrite=True (--overwrite true) to replace it.")
            writers = {
                name: stack.enter_context(open_volume_writer(output_dir / f"{name}{suffix}", shape, dtype, overwrite=overwrite))
                for name, dtype in outputs.items()
            }
            fg_voxels = 0
            preview_pair = None
            for z in range(shape[0]):
                image = source[z]
                try:
                    prob = self.predict_slice(image)
                except ValueError as e:
                    raise ValueError(f"{input_path}, slice {z}: {e}") from e
                mask = (prob >= self.threshold).astype(np.uint8) * 255
                fg_voxels += int((mask > 0).sum())
                if "probabilities" in writers:
                    p = np.round(prob * 255).astype(np.uint8) if prob_dtype == np.uint8 else prob
                    writers["probabilities"].write_slice(z, p)
                if "masks" in writers:
                    writers["masks"].write_slice(z, mask)
                if z == middle:
                    preview_pair = (normalize_slice(image), mask > 0)
                if (z + 1) % max(1, shape[0] // 10) == 0 or z + 1 == shape[0]:
                    self.logger.info(f"segmented slice {z + 1}/{shape[0]}")
        written = {name: str(w.path) for name, w in writers.items()}
        if preview and preview_pair is not None:
            written["preview"] = str(_write_preview(preview_path, *preview_pair))
        summary = {
            "input": str(input_path),
            "shape": list(shape),
            "threshold": self.threshold,
            "foreground_fraction": fg_voxels / float(np.prod(shape)),
            "outputs": dict(written),
        }
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        written["summary"] = str(summary_path)
        return written


def _write_preview(path: Path, image: np.ndarray, mask: np.ndarray) -> Path:
    """Side-by-side PNG: the slice, and the slice with mitochondria tinted red and outlined."""
    from PIL import Image
    from scipy import ndimage

    grey = np.round(image * 255).astype(np.uint8)
    rgb = np.stack([grey] * 3, axis=-1).astype(np.float32)
    tinted = rgb.copy()
    tinted[mask] = 0.55 * tinted[mask] + 0.45 * np.array([255, 0, 0], dtype=np.float32)
    edge = mask & ~ndimage.binary_erosion(mask)
    tinted[edge] = (255, 255, 0)
    pair = np.concatenate([rgb, np.full((rgb.shape[0], 8, 3), 255, np.float32), tinted], axis=1)
    Image.fromarray(pair.astype(np.uint8)).save(path)
    return path
