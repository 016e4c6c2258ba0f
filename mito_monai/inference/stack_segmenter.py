"""Whole-stack segmentation of volumes of any size: block by block, window by window, streamed to disk."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from typing import Any
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from torch import nn

from mito_monai.inference.block_predictor import BlockPredictor, normalize_slice
from mito_monai.inference.block_plan import BlockPlan
from mito_monai.inference.executors import make_executor
from mito_monai.inference.tasks import BlocksDone, BlockSegmentation, SliceStats, merge_slice_stats
from mito_monai.runtime.precision import Precision
from mito_monai.io import (
    DataError,
    SlabBoxWriter,
    Volume,
    ZarrBoxWriter,
    create_ome_zarr_image,
    open_volume,
    open_volume_writer,
)

__all__ = ["StackSegmenter", "normalize_slice", "OUTPUT_SUFFIXES"]

#: output format name -> file suffix ("png" writes a folder of PNG slices, "zarr" an OME-Zarr store)
OUTPUT_SUFFIXES = {
    "tif": ".tif", "tiff": ".tif", "h5": ".h5", "hdf5": ".h5", "nii": ".nii.gz", "png": "",
    "zarr": ".ome.zarr", "ome-zarr": ".ome.zarr",
}
_ZARR_STORE = "segmentation.ome.zarr"
_MASK_LABEL = "mask"


def _largest_divisor(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


class StackSegmenter:
    """Segment mitochondria in a (Z, Y, X) stack of any size with a 2D network.

    The volume is cut into blocks of ``block_slices`` slices x ``block_tile`` square tiles
    (:class:`~mito_monai.inference.block_plan.BlockPlan`). A block reads its core plus a halo of one window, and its
    :class:`~mito_monai.inference.block_predictor.BlockPredictor` runs every window that touches the core (in
    batches, across the block's slices and tiles), blends them and gives back only the core. So the output is the
    same for any block grid, and peak memory is set by the block size, not the volume. Each slice is min-max
    normalised with its own minimum and maximum over the whole slice (a first, read-only pass), as in training;
    with a ``histogram_reference`` each normalised slice is then matched to it with the quantiles of the whole
    slice (a second read-only pass, slice by slice in this process).
    Slices smaller than the window are reflect-padded to it. The in-process run reads the next block in a
    background thread and writes the previous one in another while the network runs.

    Args:
        network: the 2D network, or a ready :class:`~mito_monai.inference.block_predictor.BlockPredictor`.
        predictor_options: the other arguments of :class:`~mito_monai.inference.block_predictor.BlockPredictor`
            (``inferer``, ``roi_size``, ``device``, ``threshold``, ``amp``, ``checkpoint``, ``channels_last``,
            ``max_window``, ``scale``, ``histogram_reference``), by keyword; none with a ready predictor. With ``scale`` (a network
            trained at another pixel size) every block holds whole slices (``block_tile`` is not used).
    """

    def __init__(self, network: nn.Module | BlockPredictor, **predictor_options: Any) -> None:
        if isinstance(network, BlockPredictor):
            if predictor_options:
                raise ValueError(f"a ready BlockPredictor takes no more options, got {sorted(predictor_options)}.")
            self.predictor = network
        else:
            self.predictor = BlockPredictor(network, **predictor_options)
        self.logger = logging.getLogger(__name__)

    @property
    def threshold(self) -> float:
        """Foreground probability at or above which a pixel is mitochondria."""
        return self.predictor.threshold

    @property
    def precision(self) -> Precision:
        """The precision the network runs in (resolved by :func:`mito_monai.runtime.resolve_precision`)."""
        return self.predictor.precision

    @property
    def network(self) -> nn.Module:
        """The network, on its device, in eval mode."""
        return self.predictor.network

    def windows(self, full: Sequence[int]) -> tuple[tuple[int, int], tuple[float, float]]:
        """The (y, x) window size and overlap used on whole slices of size ``full`` (Y, X)."""
        return self.predictor.windows(full)

    def predict_slice(self, image: np.ndarray) -> np.ndarray:
        """Foreground probability (Y, X) float32 of one raw 2D slice (Y, X)."""
        return self.predictor.predict_slice(image)

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
        fmt, prob_dtype = self._output_format(
            output_format, save_probabilities, save_masks, probabilities_dtype, scheduler, resume
        )
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        names = (["probabilities"] if save_probabilities else []) + (["masks"] if save_masks else [])
        with open_volume(input_path, key=key, missing_chunks=missing_chunks) as source:
            plan, window = self._plan(source.shape, block_slices, block_tile)
            paths = _RunPaths(output_dir, source.shape[0], fmt)
            record = BlocksDone(output_dir / "blocks_done") if paths.zarr else None
            resuming = resume and paths.store.exists() and record.exists()
            if not resuming:
                paths.refuse_existing(preview, overwrite)
            settings = {
                "input": str(input_path), "key": key, **plan.describe(), "roi_size": list(self.predictor.roi_size),
                "window": list(window), "overlap": self.predictor.overlap, "threshold": self.threshold,
                "probabilities_dtype": str(prob_dtype), "save_probabilities": save_probabilities,
                "save_masks": save_masks, **self.predictor.fingerprint(),
            }
            with make_executor(scheduler, dask_workers, dask_address, dask_processes) as executor:
                if resuming:
                    stats = record.load_settings(settings)
                else:
                    stats = self._slice_statistics(executor, source, input_path, key, plan, missing_chunks)
                source.missing_chunks = "fill"  # the statistics pass has checked every chunk already
                quantiles = self._slice_quantiles(source)
                with ExitStack() as stack:
                    if paths.zarr:
                        writers, written = self._zarr_outputs(
                            paths.store, names, plan, prob_dtype, source.voxel_size, source.unit, resuming, record
                        )
                        if not resuming:
                            record.start(settings, stats)
                    else:
                        writers, written = self._file_outputs(stack, paths, names, plan, prob_dtype, overwrite)
                    task = BlockSegmentation(self.predictor, input_path, key, plan, stats, writers, record, source, quantiles)
                    foreground = self._map_blocks(executor, task, plan, record if resuming else None, progress)
            if preview:
                written["preview"] = str(self._preview(source, paths.preview, written))
        summary = {
            "input": str(input_path),
            "shape": list(plan.shape),
            "voxel_size": list(source.voxel_size) if source.voxel_size else None,
            "threshold": self.threshold,
            "blocks": len(plan),
            "block_shape": list(plan.block_shape),
            "foreground_fraction": foreground / float(np.prod(plan.shape)),
            "precision": self.predictor.precision.as_dict(),
            "outputs": dict(written),
        }
        paths.summary.write_text(json.dumps(summary, indent=2) + "\n")
        written["summary"] = str(paths.summary)
        return written

    # the stages of a run ----------------------------------------------------------------------
    @staticmethod
    def _output_format(
        output_format: str, save_probabilities: bool, save_masks: bool, probabilities_dtype: str, scheduler: str,
        resume: bool,
    ) -> tuple[str, np.dtype]:
        """The checked output format name and the probabilities' dtype."""
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
        return fmt, np.dtype(np.uint8 if fmt == "png" or probabilities_dtype == "uint8" else np.float32)

    def _plan(self, shape: Sequence[int], block_slices: int, block_tile: int) -> tuple[BlockPlan, tuple[int, int]]:
        """The block plan of a stack of ``shape`` and the window its slices get."""
        window, _ = self.windows(shape[1:])
        if self.predictor.rescaling:  # whole slices are resized: blocks of whole slices, no in-plane halo
            return BlockPlan(shape, (block_slices, *shape[1:])), window
        try:
            return BlockPlan(shape, (block_slices, block_tile, block_tile), (0, *window)), window
        except ValueError as e:
            if window == self.predictor.roi_size:
                raise
            raise ValueError(
                f"{e} The windows grew from {self.predictor.roi_size} to {window} (--max_window {self.predictor.max_window})."
            ) from None

    @staticmethod
    def _slice_statistics(executor, source: Volume, input_path, key, plan: BlockPlan, missing_chunks: str):
        """Per-slice (low, high) of the whole slices, block by block (a read-only first pass)."""
        stats_plan = BlockPlan(plan.shape, plan.block_shape)
        task = SliceStats(input_path, key, stats_plan, missing_chunks, source)
        parts = executor.map(task, range(len(stats_plan)), "slice statistics", progress=False)
        try:
            return merge_slice_stats(parts, plan.shape[0])
        except ValueError as e:
            raise ValueError(f"{input_path}, {e}") from e

    def _slice_quantiles(self, source: Volume) -> np.ndarray | None:
        """With a histogram reference, the quantiles (Z, Q) of every whole normalised slice, slice by slice in
        this process (a read-only pass); else None."""
        if self.predictor.matcher is None:
            return None
        return np.concatenate([self.predictor.slice_quantiles(normalize_slice(source[z])[None]) for z in range(source.shape[0])])

    @staticmethod
    def _file_outputs(stack: ExitStack, paths: _RunPaths, names, plan: BlockPlan, prob_dtype, overwrite: bool):
        """Slice-by-slice writers (TIFF, HDF5, NIfTI, PNG) behind slab box writers, closed by ``stack``."""
        writers, written = {}, {}
        for name in names:
            dtype = prob_dtype if name == "probabilities" else np.uint8
            w = stack.enter_context(open_volume_writer(paths.output(name), plan.shape, dtype, overwrite=overwrite))
            scale = name == "probabilities" and prob_dtype == np.uint8
            writers[name] = SlabBoxWriter(w, plan.block_shape[0], scale_probabilities=scale)
            written[name] = str(w.path)
        return writers, written

    def _map_blocks(self, executor, task: BlockSegmentation, plan: BlockPlan, record: BlocksDone | None, progress: bool) -> int:
        """Run ``task`` on every block not yet recorded as done in ``record``; the foreground voxel count."""
        done = record.done() if record is not None else {}
        todo = [b for b in range(len(plan)) if b not in done]
        if done:
            self.logger.info(f"resuming: {len(done)} of {len(plan)} blocks already done")
        foreground = sum(done.values())
        for n in executor.map(task, todo, "segmenting", progress=progress, voxels=[plan[b].voxels for b in todo]):
            foreground += n
        return foreground

    def _preview(self, source: Volume, path: Path, written: dict) -> Path:
        """The middle slice beside its mask (from the written masks, else the thresholded probabilities)."""
        middle = source.shape[0] // 2
        mask_path = written.get("masks", written.get("probabilities"))
        with open_volume(mask_path) as out:
            m = out[middle]
        mask = m > 0 if "masks" in written else _probability(m) >= self.threshold
        return _write_preview(path, normalize_slice(source[middle]), mask)

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


class _RunPaths:
    """Where a run writes: the outputs, the OME-Zarr store, the preview and the summary."""

    def __init__(self, output_dir: Path, depth: int, fmt: str) -> None:
        self.output_dir, self.suffix = output_dir, OUTPUT_SUFFIXES[fmt]
        self.zarr = self.suffix == ".ome.zarr"
        self.store = output_dir / _ZARR_STORE
        self.preview = output_dir / f"preview_z{depth // 2:04d}.png"
        self.summary = output_dir / "summary.json"

    def output(self, name: str) -> Path:
        return self.output_dir / f"{name}{self.suffix}"

    def refuse_existing(self, preview: bool, overwrite: bool) -> None:
        """FileExistsError naming the first output that exists, unless ``overwrite``."""
        candidates = ([self.preview] if preview else []) + [self.summary] + ([self.store] if self.zarr else [])
        existing = [p for p in candidates if p.exists()]
        if existing and not overwrite:
            raise FileExistsError(f"{existing[0]} exists; pass overwrite=True (--overwrite true) to replace it.")


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
