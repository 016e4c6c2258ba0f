"""Whole-stack segmentation of volumes of any size: block by block, window by window, streamed to disk."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from monai.data.utils import compute_importance_map
from monai.inferers import Inferer
from torch import nn

from mito_monai.io import (
    DataError,
    SlabBoxWriter,
    ZarrBoxWriter,
    create_ome_zarr_image,
    open_volume,
    open_volume_writer,
)
from mito_monai.inference.blocks import Block, BlockPlan, fitted_window, window_starts
from mito_monai.inference.executors import make_executor
from mito_monai.inference.tasks import BlocksDone, BlockSegmentation, SliceStats, merge_slice_stats
from mito_monai.transforms import NormalizePerSlice

__all__ = ["StackSegmenter", "normalize_slice", "OUTPUT_SUFFIXES"]

_NORMALIZE = NormalizePerSlice()

#: output format name -> file suffix ("png" writes a folder of PNG slices, "zarr" an OME-Zarr store)
OUTPUT_SUFFIXES = {
    "tif": ".tif", "tiff": ".tif", "h5": ".h5", "hdf5": ".h5", "nii": ".nii.gz", "png": "",
    "zarr": ".ome.zarr", "ome-zarr": ".ome.zarr",
}
_ZARR_STORE = "segmentation.ome.zarr"
_MASK_LABEL = "mask"


def normalize_slice(image: np.ndarray) -> np.ndarray:
    """Min-max normalise one 2D slice to [0, 1] in float32; a constant slice becomes zeros.

    The same per-slice normalisation as the training transforms
    (:class:`mito_monai.transforms.NormalizePerSliced`).
    """
    image = np.asarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        raise ValueError(f"slice has {int((~np.isfinite(image)).sum())} NaN/Inf pixels.")
    return np.asarray(_NORMALIZE(image), dtype=np.float32)


def _largest_divisor(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


class StackSegmenter:
    """Segment mitochondria in a (Z, Y, X) stack of any size with a 2D network.

    The volume is cut into blocks of ``block_slices`` slices x ``block_tile`` square tiles
    (:class:`~mito_monai.inference.blocks.BlockPlan`). Sliding windows (Gaussian-weighted overlap,
    MONAI's weighting) lie on one lattice fixed by the whole slice; a block reads its core plus a halo of
    one window, runs every window that touches its core (in batches of ``sw_batch_size``, across the
    block's slices and tiles), blends them and writes back only its core. So the output is the same for
    any block grid, and peak memory is set by the block size, not the volume. Each slice is min-max
    normalised with its own minimum and maximum over the whole slice (a first, read-only pass), as in
    training. Slices smaller than the window are reflect-padded to it.

    With ``max_window`` the windows grow beyond ``roi_size`` (the network is fully convolutional): one
    window per whole slice when the slice fits in ``max_window``, else the fewest windows of at most
    ``max_window`` that keep the configured window's overlap in pixels
    (:func:`~mito_monai.inference.blocks.fitted_window`). This removes most of the work repeated in
    overlaps (a 768 x 1024 slice: one window instead of 2 x 3 windows of 512 at overlap 0.5, half the
    network time). Batches hold about ``sw_batch_size`` windows of ``roi_size`` worth of pixels.
    The in-process run reads the next block in a background thread and writes the previous one in
    another while the network runs.

    The foreground probability is softmax channel 1 of 2-class logits, or the sigmoid of 1-channel logits.

    Args:
        network: a 2D network giving (B, 2, H, W) or (B, 1, H, W) logits (or a tuple whose first entry is).
        inferer: a :class:`monai.inferers.SlidingWindowInferer` whose ``roi_size``, ``sw_batch_size``,
            ``overlap``, ``mode`` and ``sigma_scale`` are used; defaults to ``roi_size``, 4, 0.5, gaussian.
        roi_size: window size when no inferer is given (the papers use 512 x 512).
        device: where the network runs.
        threshold: foreground probability at or above which a pixel is mitochondria.
        amp: run the network under autocast (bfloat16 on CPU, float16 on CUDA).
        channels_last: run the network in channels-last memory format (faster on CPU with ``amp``).
        max_window: largest window side the windows may grow to (None: always ``roi_size``); rounded to
            the network's ``divisor`` (its size divisor) when it has one.
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
        channels_last: bool = False,
        max_window: int | None = None,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        if checkpoint is not None:
            from mito_monai.runtime.checkpoint_files import load_checkpoint

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
        self.amp = amp
        self.channels_last = channels_last
        if channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        self._weights: dict[tuple[int, int], torch.Tensor] = {}
        self.logger = logging.getLogger(__name__)

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
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = torch.bfloat16 if self.device.type == "cpu" else torch.float16
        with torch.autocast(self.device.type, dtype=dtype, enabled=self.amp):
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
        """
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
            logits = self._forward(torch.cat([x[z : z + 1, :, iy : iy + ry, ix : ix + rx] for z, iy, ix in batch]))
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
        return self.predict_region(normalize_slice(image)[None], (0, 0), (slice(0, full[0]), slice(0, full[1])), full)[0]

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

    # the whole stack --------------------------------------------------------------------------
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
        probabilities_dtype: str = "float32",
        block_slices: int = 4,
        block_tile: int = 4096,
        scheduler: str = "local",
        dask_workers: int = 2,
        dask_address: str | None = None,
        dask_processes: bool = True,
        resume: bool = False,
        progress: bool = True,
        missing_chunks: str = "error",
    ) -> dict[str, str]:
        """Segment the stack at ``input_path`` and write ``probabilities`` / ``masks`` into ``output_dir``.

        Probabilities are float32 in [0, 1] (or uint8 0-255 with ``probabilities_dtype="uint8"``, and
        always for PNG); masks are uint8 with mitochondria = 255 (readers here binarise by non-zero).
        ``output_format`` is one of ``tif``, ``h5``, ``nii``, ``png`` or ``zarr``; ``zarr`` writes one
        OME-Zarr store ``segmentation.ome.zarr`` (the probabilities as the image, the mask as the label
        image ``labels/mask``, chunked, with the input's voxel size). Existing outputs are never
        overwritten unless ``overwrite``.

        Args:
            block_slices, block_tile: block size (slices x square tiles); the tile must be at least the
                window unless it covers the whole slice.
            scheduler: ``local`` (this process) or ``dask`` (Dask distributed; zarr output only): a
                ``LocalCluster`` of ``dask_workers`` processes (threads with ``dask_processes=False``), or
                the scheduler at ``dask_address`` (a wrong address fails after 5 s).
            resume: with zarr output, skip the blocks an interrupted run recorded as done in
                ``output_dir/blocks_done`` (the settings must be the same).
            progress: show a progress bar over the blocks.
            missing_chunks: a zarr input's absent chunk files are an error naming the block (``error``) or
                read as the fill value (``fill``, zarr's convention for empty chunks).

        Returns:
            name -> written path (``probabilities``, ``masks``, ``preview``, ``summary``).
        """
        fmt = output_format.lower().lstrip(".")
        if fmt not in OUTPUT_SUFFIXES:
            raise ValueError(f"output_format must be one of {sorted(set(OUTPUT_SUFFIXES))}, got {output_format!r}.")
        zarr_out = OUTPUT_SUFFIXES[fmt] == ".ome.zarr"
        if not (save_probabilities or save_masks):
            raise ValueError("nothing to write: save_probabilities and save_masks are both False.")
        if probabilities_dtype not in ("float32", "uint8"):
            raise ValueError(f"probabilities_dtype must be 'float32' or 'uint8', got {probabilities_dtype!r}.")
        if scheduler not in ("local", "dask"):
            raise ValueError(f"scheduler must be 'local' or 'dask', got {scheduler!r}.")
        if scheduler == "dask" and not zarr_out:
            raise ValueError("--scheduler dask writes blocks straight into the output store: use --output_format zarr.")
        if resume and not zarr_out:
            raise ValueError("--resume needs a block-wise output: use --output_format zarr.")
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        suffix = OUTPUT_SUFFIXES[fmt]
        prob_dtype = np.dtype(np.uint8 if fmt == "png" or probabilities_dtype == "uint8" else np.float32)

        with open_volume(input_path, key=key, missing_chunks=missing_chunks) as source:
            shape, voxel_size, unit = source.shape, source.voxel_size, source.unit
        window, _ = self.windows(shape[1:])
        try:
            plan = BlockPlan(shape, (block_slices, block_tile, block_tile), (0, *window))
        except ValueError as e:
            if window == self.roi_size:
                raise
            raise ValueError(f"{e} The windows grew from {self.roi_size} to {window} (--max_window {self.max_window}).") from None
        middle = shape[0] // 2
        preview_path = output_dir / f"preview_z{middle:04d}.png"
        summary_path = output_dir / "summary.json"
        store = output_dir / _ZARR_STORE
        record = BlocksDone(output_dir / "blocks_done") if zarr_out else None
        resuming = resume and store.exists() and record.exists()
        if not resuming:
            existing = [p for p in ([preview_path] if preview else []) + [summary_path] + ([store] if zarr_out else []) if p.exists()]
            if existing and not overwrite:
                raise FileExistsError(f"{existing[0]} exists; pass overwrite=True (--overwrite true) to replace it.")
        settings = {
            "input": str(input_path), "key": key, **plan.describe(), "roi_size": list(self.roi_size), "window": list(window),
            "overlap": self.overlap, "threshold": self.threshold, "probabilities_dtype": str(prob_dtype),
            "save_probabilities": save_probabilities, "save_masks": save_masks,
        }
        stats_plan = BlockPlan(shape, plan.block_shape)
        with make_executor(scheduler, dask_workers, dask_address, dask_processes) as executor:
            if resuming:
                stats = record.load_settings(settings)
            else:
                parts = executor.map(SliceStats(input_path, key, stats_plan, missing_chunks), range(len(stats_plan)), "slice statistics", progress=False)
                try:
                    stats = merge_slice_stats(parts, shape[0])
                except ValueError as e:
                    raise ValueError(f"{input_path}, {e}") from e
            with ExitStack() as stack:
                names = (["probabilities"] if save_probabilities else []) + (["masks"] if save_masks else [])
                if zarr_out:
                    writers, written = self._zarr_outputs(store, names, plan, prob_dtype, voxel_size, unit, resuming, record)
                    if not resuming:
                        record.start(settings, stats)
                else:
                    writers, written = {}, {}
                    for name in names:
                        dtype = prob_dtype if name == "probabilities" else np.uint8
                        w = stack.enter_context(open_volume_writer(output_dir / f"{name}{suffix}", shape, dtype, overwrite=overwrite))
                        scale = name == "probabilities" and prob_dtype == np.uint8
                        writers[name] = SlabBoxWriter(w, plan.block_shape[0], scale_probabilities=scale)
                        written[name] = str(w.path)
                done = record.done() if resuming else {}
                todo = [b for b in range(len(plan)) if b not in done]
                if done:
                    self.logger.info(f"resuming: {len(done)} of {len(plan)} blocks already done")
                task = BlockSegmentation(self, input_path, key, plan, stats, writers, record)
                fg = sum(done.values())
                for n in executor.map(task, todo, "segmenting", progress=progress, voxels=[plan[b].voxels for b in todo]):
                    fg += n
        if preview:
            with open_volume(input_path, key=key) as src:
                image = src[middle]
            mask_path = written.get("masks", written.get("probabilities"))
            with open_volume(mask_path) as out:
                m = out[middle]
            mask = m > 0 if "masks" in written else _probability(m) >= self.threshold
            written["preview"] = str(_write_preview(preview_path, normalize_slice(image), mask))
        summary = {
            "input": str(input_path),
            "shape": list(shape),
            "voxel_size": list(voxel_size) if voxel_size else None,
            "threshold": self.threshold,
            "blocks": len(plan),
            "block_shape": list(plan.block_shape),
            "foreground_fraction": fg / float(np.prod(shape)),
            "outputs": dict(written),
        }
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        written["summary"] = str(summary_path)
        return written

    def _zarr_outputs(self, store, names, plan, prob_dtype, voxel_size, unit, resuming, record):
        chunks = (
            _largest_divisor(plan.block_shape[0], 16),
            _largest_divisor(plan.block_shape[1], 512),
            _largest_divisor(plan.block_shape[2], 512),
        )
        paths = {"probabilities": store, "masks": store / "labels" / _MASK_LABEL}
        if not resuming:
            if store.exists():
                if not (store / ".zattrs").exists() and not (store / "zarr.json").exists():
                    raise DataError(f"{store} exists and is not a zarr store; refusing to replace it.")
                shutil.rmtree(store)
            record.clear()
            # the root image is the probabilities; without them it is an empty image of the same grid
            create_ome_zarr_image(store, "probabilities", plan.shape, prob_dtype, chunks, voxel_size, unit)
            if "masks" in names:
                create_ome_zarr_image(paths["masks"], _MASK_LABEL, plan.shape, np.uint8, chunks, voxel_size, unit, label_of=store)
        writers = {
            n: ZarrBoxWriter(paths[n] / "0", scale_probabilities=(n == "probabilities" and prob_dtype == np.uint8))
            for n in names
        }
        return writers, {n: str(paths[n]) for n in names}


def _probability(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float32) / 255.0 if values.dtype == np.uint8 else values


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
