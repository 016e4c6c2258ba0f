"""Statistics of the instances that add up over blocks: voxel counts, coordinate and intensity sums, boxes, contacts.

Each block of a :class:`~mito_monai.inference.block_plan.BlockPlan` is read once, with a one-voxel halo, and gives
a :class:`BlockStatistics`: per instance ID in its core the voxel count, the sums of the voxel coordinates
(for the centroid), of the image and of the probabilities (for the means) and the bounding box; and the pairs
of different IDs that touch anywhere in the read box (the halo catches the contacts across block borders).
:func:`merge_block_statistics` adds the blocks up (sums add, boxes take the min/max, pairs are a set union),
so the result does not depend on the block grid. Memory is one block.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from mito_monai.io import DataError

__all__ = ["BlockStatistics", "ObjectStatistics", "StatisticsTask", "block_statistics", "contact_pairs",
           "merge_block_statistics"]

#: contact connectivity -> the offsets of one half of the neighbourhood (the other half is their negation)
_HALF_NEIGHBOURHOOD = {
    6: [(1, 0, 0), (0, 1, 0), (0, 0, 1)],
    26: [d for d in np.ndindex(3, 3, 3) if d > (1, 1, 1)],
}


def _offsets(connectivity: int) -> list[tuple[int, int, int]]:
    if connectivity not in _HALF_NEIGHBOURHOOD:
        raise ValueError(f"contact connectivity must be 6 or 26, got {connectivity}.")
    if connectivity == 6:
        return _HALF_NEIGHBOURHOOD[6]
    return [tuple(int(v) - 1 for v in d) for d in _HALF_NEIGHBOURHOOD[26]]  # type: ignore[misc]


def contact_pairs(labels: np.ndarray, connectivity: int = 6) -> np.ndarray:
    """(K, 2) sorted pairs ``(a, b)``, ``0 < a < b``, of IDs with touching voxels in ``labels``.

    Two voxels touch when they share a face (``connectivity=6``) or a face, edge or corner (26).
    """
    pairs = []
    shape = labels.shape
    for d in _offsets(connectivity):
        lo = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(d, shape))
        hi = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(d, shape))
        a, b = labels[lo], labels[hi]
        touch = (a != b) & (a != 0) & (b != 0)
        if touch.any():
            a, b = a[touch], b[touch]
            pairs.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(pairs).astype(np.int64), axis=0)


@dataclass
class BlockStatistics:
    """The additive statistics of one block (see the module docstring); arrays are per ID, in ``ids`` order.

    Attributes:
        ids: (N,) the IDs present in the block's core.
        voxels: (N,) voxel counts.
        coordinate_sums: (N, 3) sums of the (z, y, x) voxel indices.
        box_min, box_max: (N, 3) the first and one-past-the-last voxel index of each ID's box in the core.
        image_sums, probability_sums: (N,) sums, or None when that volume is not measured.
        pairs: (K, 2) touching ID pairs in the read box.
    """

    ids: np.ndarray
    voxels: np.ndarray
    coordinate_sums: np.ndarray
    box_min: np.ndarray
    box_max: np.ndarray
    image_sums: np.ndarray | None = None
    probability_sums: np.ndarray | None = None
    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))


def block_statistics(
    labels: np.ndarray,
    core: Sequence[slice],
    origin: Sequence[int],
    image: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    connectivity: int = 6,
) -> BlockStatistics:
    """The statistics of one block.

    Args:
        labels: the read box of instance IDs (the core and its halo), integer.
        core: the core inside ``labels`` (local slices); only its voxels are counted.
        origin: the global (z, y, x) index of ``labels[0, 0, 0]``.
        image, probabilities: the core's voxels of those volumes (the core's shape), or None.
        connectivity: 6 or 26, which voxels touch for the contact pairs.
    """
    pairs = contact_pairs(labels, connectivity)
    inner = labels[tuple(core)]
    fg = inner != 0
    values = inner[fg]
    ids, compact = np.unique(values, return_inverse=True)
    n = len(ids)
    voxels = np.bincount(compact, minlength=n).astype(np.int64)
    coords = np.nonzero(fg)
    start = [int(o) + s.start for o, s in zip(origin, core)]
    sums = np.stack([np.bincount(compact, weights=c, minlength=n) + voxels * s for c, s in zip(coords, start)], 1)
    del coords
    box_min = np.zeros((n, 3), np.int64)
    box_max = np.zeros((n, 3), np.int64)
    if n:
        dense = np.zeros(inner.shape, np.int32)
        dense[fg] = compact + 1
        for i, box in enumerate(ndimage.find_objects(dense)):
            box_min[i] = [s.start + o for s, o in zip(box, start)]
            box_max[i] = [s.stop + o for s, o in zip(box, start)]
    image_sums = probability_sums = None
    if image is not None:
        image_sums = np.bincount(compact, weights=np.asarray(image)[fg].astype(np.float64), minlength=n)
    if probabilities is not None:
        probability_sums = np.bincount(compact, weights=np.asarray(probabilities)[fg].astype(np.float64), minlength=n)
    return BlockStatistics(ids.astype(np.int64), voxels, sums, box_min, box_max, image_sums, probability_sums, pairs)


@dataclass
class ObjectStatistics:
    """The block statistics added up: one entry per instance ID, IDs ascending (fields as in
    :class:`BlockStatistics`); ``neighbours`` counts the distinct IDs each one touches."""

    ids: np.ndarray
    voxels: np.ndarray
    coordinate_sums: np.ndarray
    box_min: np.ndarray
    box_max: np.ndarray
    image_sums: np.ndarray | None
    probability_sums: np.ndarray | None
    pairs: np.ndarray
    neighbours: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def merge_block_statistics(parts: Iterable[BlockStatistics]) -> ObjectStatistics:
    """Add up the statistics of all blocks (in any order; see the module docstring)."""
    parts = list(parts)
    ids_all = np.concatenate([p.ids for p in parts]) if parts else np.zeros(0, np.int64)
    ids, where = np.unique(ids_all, return_inverse=True)
    n = len(ids)

    def add(name: str, width: int | None = None) -> np.ndarray | None:
        if not parts or getattr(parts[0], name) is None:
            return None
        stacked = np.concatenate([getattr(p, name) for p in parts])
        out = np.zeros((n,) if width is None else (n, width), np.float64)
        np.add.at(out, where, stacked)
        return out

    voxels = add("voxels").astype(np.int64) if parts else np.zeros(0, np.int64)
    sums = add("coordinate_sums", 3) if parts else np.zeros((0, 3))
    box_min = np.full((n, 3), np.iinfo(np.int64).max, np.int64)
    box_max = np.zeros((n, 3), np.int64)
    if parts:
        np.minimum.at(box_min, where, np.concatenate([p.box_min for p in parts]))
        np.maximum.at(box_max, where, np.concatenate([p.box_max for p in parts]))
    pairs = np.unique(np.concatenate([p.pairs for p in parts] + [np.zeros((0, 2), np.int64)]), axis=0)
    neighbours = np.zeros(n, np.int64)
    if len(pairs):
        np.add.at(neighbours, np.searchsorted(ids, pairs.ravel()), 1)
    return ObjectStatistics(ids, voxels, sums, box_min, box_max, add("image_sums"), add("probability_sums"), pairs,
                            neighbours)


def _as_probabilities(values: np.ndarray, name: str) -> np.ndarray:
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.float32) / float(np.iinfo(values.dtype).max)
    values = values.astype(np.float32, copy=False)
    if values.size and (float(values.min()) < 0.0 or float(values.max()) > 1.0):
        raise DataError(f"probabilities {name} have values in [{float(values.min()):g}, {float(values.max()):g}]; "
                        "expected foreground probabilities in [0, 1] (or integers scaled by their maximum).")
    return values


class StatisticsTask:
    """``task(block_index) -> BlockStatistics`` over a block plan, for the executors of
    :mod:`mito_monai.inference.executors` (picklable: volumes are paths, opened on first use in each process).

    Args:
        instances, image, probabilities: opened volumes or ``(path, key)`` pairs to open (image and
            probabilities may be None).
        plan: the :class:`~mito_monai.inference.block_plan.BlockPlan` (no halo; a one-voxel halo is read here).
        connectivity: contact connectivity, 6 or 26.
    """

    def __init__(self, instances, image, probabilities, plan, connectivity: int = 6) -> None:
        self.sources = {"instances": instances, "image": image, "probabilities": probabilities}
        self.plan = plan
        self.connectivity = int(connectivity)
        _offsets(self.connectivity)
        self._opened: dict = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_opened"] = {}
        return state

    def volume(self, name: str):
        """The opened volume ``name`` (opened here on first use when given as a path)."""
        source = self.sources[name]
        if source is None or hasattr(source, "read"):
            return source
        if name not in self._opened:
            from mito_monai.io import open_volume

            self._opened[name] = open_volume(*source)
        return self._opened[name]

    def __call__(self, index: int) -> BlockStatistics:
        block = self.plan[index]
        read = tuple(slice(max(0, s.start - 1), min(n, s.stop + 1)) for s, n in zip(block.core, self.plan.shape))
        instances = self.volume("instances")
        labels = np.asarray(instances.read(read))
        if labels.size and labels.min() < 0:
            raise DataError(f"{instances} has negative values (e.g. {int(labels.min())}); expected instance IDs >= 0.")
        core = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(block.core, read))
        image = self.volume("image")
        probabilities = self.volume("probabilities")
        return block_statistics(
            labels, core, [r.start for r in read],
            None if image is None else image.read(block.core),
            None if probabilities is None else _as_probabilities(np.asarray(probabilities.read(block.core)), str(probabilities)),
            self.connectivity,
        )
