"""Block-wise tasks that any executor runs: per-slice statistics, and read-with-halo + predict + write-cropped.

A task is a small picklable callable ``task(block_index) -> result``; it opens its input (and output)
on first use in the process that runs it and keeps it open for the next blocks, so a Dask worker
deserialises the task (and the network in it) once and then only receives block indices.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mito_monai.inference.block_predictor import BlockPredictor
from mito_monai.inference.block_plan import BlockPlan
from mito_monai.io import Volume, open_volume

__all__ = ["SliceStats", "merge_slice_stats", "BlockSegmentation", "BlocksDone"]


class SliceStats:
    """Per-slice minimum, maximum and number of non-finite voxels of one block (no halo).

    Returns ``(z0, low, high, bad)`` with one entry per slice of the block.
    """

    def __init__(
        self, input_path: str | os.PathLike, key: str | None, plan: BlockPlan, missing_chunks: str = "error",
        volume: Volume | None = None,
    ) -> None:
        self.input_path, self.key, self.plan = str(input_path), key, plan
        self.missing_chunks = missing_chunks
        self._volume = volume  # an already opened input (in-process runs); a worker opens its own

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_volume": None}

    def __call__(self, index: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        if self._volume is None:
            self._volume = open_volume(self.input_path, self.key, self.missing_chunks)
        block = self.plan[index]
        data = self._volume.read(block.core)
        if np.issubdtype(data.dtype, np.floating):
            finite = np.isfinite(data)
            bad = data.size // len(data) - finite.reshape(len(data), -1).sum(1)
            data = np.where(finite, data, np.nan)
            low, high = np.nanmin(data, axis=(1, 2)), np.nanmax(data, axis=(1, 2))
        else:
            bad = np.zeros(len(data), np.int64)
            low, high = data.min(axis=(1, 2)), data.max(axis=(1, 2))
        return block.core[0].start, low.astype(np.float64), high.astype(np.float64), bad


def merge_slice_stats(parts: Iterable[tuple], depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Reduce :class:`SliceStats` results to the (low, high) of every whole slice.

    Raises:
        ValueError: a slice has NaN/Inf voxels (``"slice Z: slice has N NaN/Inf pixels."``).
    """
    low, high = np.full(depth, np.inf), np.full(depth, -np.inf)
    bad = np.zeros(depth, np.int64)
    for z0, lo, hi, b in parts:
        zs = slice(z0, z0 + len(lo))
        low[zs] = np.fmin(low[zs], lo)
        high[zs] = np.fmax(high[zs], hi)
        bad[zs] += b
    if bad.any():
        z = int(np.flatnonzero(bad)[0])
        raise ValueError(f"slice {z}: slice has {int(bad[z])} NaN/Inf pixels.")
    return low, high


def _short(value: Any) -> str:
    """A setting's value for a one-line message (``None`` when the interrupted run did not record it)."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


class BlocksDone:
    """The blocks-done record of a block-wise run: a folder with the run's settings and one file per block.

    Each finished block writes ``<index>.json`` (its foreground voxel count) atomically, after its data
    are in the output store, so any process may record blocks concurrently and a killed run leaves
    only blocks that are complete.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def exists(self) -> bool:
        return (self.folder / "settings.json").is_file()

    def clear(self) -> None:
        if self.folder.exists():
            shutil.rmtree(self.folder)

    def start(self, settings: Mapping, stats: tuple[np.ndarray, np.ndarray]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        payload = {"settings": dict(settings), "low": stats[0].tolist(), "high": stats[1].tolist()}
        self._write(self.folder / "settings.json", payload)

    def load_settings(self, settings: Mapping) -> tuple[np.ndarray, np.ndarray]:
        """The per-slice statistics of the recorded run; its settings must equal ``settings``."""
        saved = json.loads((self.folder / "settings.json").read_text())
        current = json.loads(json.dumps(dict(settings)))
        if saved["settings"] != current:
            diff = sorted(k for k in set(saved["settings"]) | set(current) if saved["settings"].get(k) != current.get(k))
            what = "; ".join(f"{k}: {_short(saved['settings'].get(k))} -> {_short(current.get(k))}" for k in diff)
            raise ValueError(
                f"{self.folder}: refusing to resume, the interrupted run used other settings ({what}); "
                "rerun with the same ones, or --overwrite true to start again."
            )
        return np.asarray(saved["low"]), np.asarray(saved["high"])

    def mark(self, index: int, foreground: int) -> None:
        self._write(self.folder / f"{index}.json", {"foreground": int(foreground)})

    def done(self) -> dict[int, int]:
        """block index -> foreground voxels, for every recorded block."""
        out = {}
        for p in self.folder.glob("[0-9]*.json"):
            out[int(p.stem)] = int(json.loads(p.read_text())["foreground"])
        return out

    @staticmethod
    def _write(path: Path, payload: Mapping) -> None:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, path)


class BlockSegmentation:
    """Segment one block: read its core with a halo, predict, write the core to every output, record it.

    The task has three stages, ``load`` (read and normalise), ``compute`` (the network) and ``store``
    (write and record), so that :class:`~mito_monai.inference.executors.InProcessExecutor` can read the
    next block and write the previous one while the network runs; calling the task runs the three in turn
    (what a Dask worker does).

    Args:
        predictor: a :class:`~mito_monai.inference.BlockPredictor` (its network is part of the task).
        input_path, key: the input stack.
        plan: the block plan.
        stats: per-slice (low, high) of the whole slices, for the normalisation.
        writers: ``probabilities`` and/or ``masks`` -> a box writer (``write(box, array)``).
        record: where finished blocks are recorded, or None.
        volume: the input, already opened (in-process runs share the run's); a worker opens its own.
        quantiles: with a histogram reference in ``predictor``, the quantiles (Z, Q) of every whole normalised
            slice (:meth:`~mito_monai.inference.BlockPredictor.slice_quantiles`), else None.

    Returns (when called with a block index): the block's number of foreground voxels.
    """

    def __init__(
        self, predictor: BlockPredictor, input_path, key, plan: BlockPlan, stats, writers: Mapping,
        record: BlocksDone | None, volume: Volume | None = None, quantiles: np.ndarray | None = None,
    ) -> None:
        self.predictor, self.input_path, self.key, self.plan = predictor, str(input_path), key, plan
        self.low, self.high = np.asarray(stats[0]), np.asarray(stats[1])
        self.writers, self.record = dict(writers), record
        self.missing_chunks = "fill"  # the statistics pass has checked every chunk already
        self._volume = volume
        self.quantiles = quantiles

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_volume": None}

    def load(self, index: int) -> np.ndarray:
        """The block's read box (Z, H, W), normalised to float32 (and histogram-matched with a reference)."""
        if self._volume is None:
            self._volume = open_volume(self.input_path, self.key, self.missing_chunks)
        block = self.plan[index]
        zs = block.core[0]
        norm = self.predictor.normalize_block(self._volume.read(block.read), self.low[zs], self.high[zs])
        return self.predictor.match_block(norm, None if self.quantiles is None else self.quantiles[zs])

    def compute(self, index: int, norm: np.ndarray) -> np.ndarray:
        """Foreground probabilities (Z, cy, cx) of the block's core."""
        return self.predictor.predict_normalized_block(norm, self.plan[index], self.plan.shape[1:])

    def store(self, index: int, prob: np.ndarray) -> int:
        """Write the block's core to every output, record the block; returns its foreground voxels."""
        block = self.plan[index]
        mask = prob >= self.predictor.threshold
        if "probabilities" in self.writers:
            self.writers["probabilities"].write(block.core, prob)
        if "masks" in self.writers:
            self.writers["masks"].write(block.core, mask.astype(np.uint8) * 255)
        foreground = int(mask.sum())
        if self.record is not None:
            self.record.mark(index, foreground)
        return foreground

    def __call__(self, index: int) -> int:
        return self.store(index, self.compute(index, self.load(index)))
