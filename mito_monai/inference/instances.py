"""3D instances from a semantic mask, block by block, merged across block borders.

Three passes over a :class:`~mito_monai.inference.block_plan.BlockPlan` (no halo), so memory is set by the
block size: (1) every block is labelled on its own with :func:`scipy.ndimage.label` (6- or
26-connectivity) and its labels are offset to be unique in the volume; (2) on every lower face of a block
the two planes that meet there are compared (with the diagonal neighbours for 26-connectivity) and
touching labels are united (union-find); (3) every block is relabelled to consecutive IDs 1..N, dropping
instances smaller than ``min_size`` voxels.

With ``split="watershed"`` a fourth pass splits touching mitochondria: every connected component is
cut out by its bounding box (with the foreground probabilities of that box, when given) and split by a
seeded watershed (:func:`split_touching`, scikit-image), and the pieces get new IDs that keep the IDs
consecutive. Memory is then set by the largest object's bounding box, not by the volume (a component
of touching mitochondria that spans the whole volume needs the whole volume).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from mito_monai.io import DataError, ZarrBoxWriter, create_ome_zarr_image, is_zarr_path, open_volume, write_volume
from mito_monai.inference.block_plan import BlockPlan

__all__ = ["label_instances", "split_touching", "SPLITS"]

#: the values of ``split``: ``none`` (connected components) or ``watershed`` (touching objects split).
SPLITS = ("none", "watershed")

#: connectivity (6, 18, 26) -> the rank of scipy's ``generate_binary_structure`` / skimage's ``connectivity``.
_RANK = {6: 1, 18: 2, 26: 3}


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        root = a
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(a, a) != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _face_pairs(lower: np.ndarray, upper: np.ndarray, connectivity: int) -> np.ndarray:
    """(K, 2) label pairs that touch between two adjacent planes (Y, X) of labels."""
    shifts = [(0, 0)] if connectivity == 6 else [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    if connectivity == 18:
        shifts = [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]
    pairs = []
    h, w = lower.shape
    for dy, dx in shifts:
        a = lower[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)]
        b = upper[max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)]
        touch = (a != 0) & (b != 0) & (a != b)
        pairs.append(np.stack([a[touch], b[touch]], axis=1))
    return np.unique(np.concatenate(pairs), axis=0) if pairs else np.zeros((0, 2), np.int64)


def split_touching(
    mask: np.ndarray,
    probabilities: np.ndarray | None = None,
    sampling: Sequence[float] | None = None,
    seed_height: float = 3.0,
    connectivity: int = 26,
) -> tuple[np.ndarray, int]:
    """Split one object into touching parts by a seeded watershed (scikit-image).

    The distance of every voxel of ``mask`` to the nearest background voxel (outside the array counts as
    background; anisotropic with ``sampling``) is computed with :func:`scipy.ndimage.distance_transform_edt`.
    Seeds are the h-maxima of that distance (:func:`skimage.morphology.h_maxima` with ``h = seed_height``):
    two parts get separate seeds when the distance at each part's centre exceeds the distance at the neck
    between them by at least ``seed_height``, i.e. when the neck's radius is at least ``seed_height`` smaller
    than both parts' radii. The seeds are flooded (:func:`skimage.segmentation.watershed`) on the negative
    distance, or on ``1 - probabilities`` when given (the border then follows the network's low-confidence
    seam between two mitochondria), within ``mask``.

    Args:
        mask: (Z, Y, X) bool, the object.
        probabilities: (Z, Y, X) foreground probabilities in [0, 1], or None.
        sampling: (z, y, x) voxel size; distances (and ``seed_height``) are in units of its smallest entry.
        seed_height: h of the h-maxima, > 0.
        connectivity: 6, 18 or 26, of the seeds and the flooding.

    Returns:
        ``(labels, n)``: (Z, Y, X) int32 with the parts numbered 1..n (0 outside ``mask``); n = 1 when no
        split is found.
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    mask = np.asarray(mask, bool)
    if mask.ndim != 3:
        raise ValueError(f"mask must be (Z, Y, X), got shape {mask.shape}.")
    if seed_height <= 0:
        raise ValueError(f"seed_height must be > 0, got {seed_height}.")
    rank = _RANK[connectivity]
    if sampling is not None:
        sampling = np.asarray(sampling, np.float64) / float(min(sampling))
    distance = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=sampling)[1:-1, 1:-1, 1:-1]
    footprint = ndimage.generate_binary_structure(3, rank)
    seeds, n = ndimage.label(h_maxima(distance, seed_height, footprint=footprint) & mask, structure=footprint)
    if n < 2:
        return mask.astype(np.int32), int(mask.any())
    landscape = -distance if probabilities is None else 1.0 - np.asarray(probabilities, np.float64)
    labels = watershed(landscape, seeds, connectivity=rank, mask=mask)
    return labels.astype(np.int32), n


def _check_voxel_size(voxel_size) -> tuple[float, float, float] | None:
    if voxel_size is None:
        return None
    if isinstance(voxel_size, str):
        voxel_size = [v for v in voxel_size.replace(",", " ").split() if v]
    try:
        values = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError):
        raise ValueError(f"voxel_size must be three numbers z,y,x (e.g. 30,8,8), got {voxel_size!r}.") from None
    if len(values) != 3 or min(values) <= 0:
        raise ValueError(f"voxel_size must be three positive numbers z,y,x (e.g. 30,8,8), got {voxel_size!r}.")
    return values


def label_instances(
    masks: str | os.PathLike,
    output: str | os.PathLike,
    key: str | None = None,
    min_size: int = 0,
    connectivity: int = 26,
    block_shape: tuple[int, int, int] = (64, 1024, 1024),
    overwrite: bool = False,
    split: str = "none",
    probabilities: str | os.PathLike | None = None,
    seed_height: float = 3.0,
    voxel_size: Sequence[float] | str | None = None,
) -> dict:
    """Label the 3D connected components of the mask at ``masks`` (non-zero = foreground) into ``output``.

    ``output`` ending in ``.zarr`` is written block by block as an OME-Zarr label image (uint64);
    any other supported format gets the whole volume at the end.

    Args:
        masks, key: the mask stack (any supported format).
        output: where the instance IDs go; an existing one is kept unless ``overwrite``.
        min_size: connected components of fewer voxels are dropped (before any split).
        connectivity: 6, 18 or 26.
        block_shape: (z, y, x) blocks of the labelling passes; the result does not depend on them.
        split: ``none``, or ``watershed`` to split touching mitochondria (see :func:`split_touching`).
        probabilities: foreground probabilities of the same shape (float in [0, 1], or integers scaled by
            their maximum), the watershed's landscape; only with ``split="watershed"``.
        seed_height: the h of the h-maxima seeds, in voxels of the finest axis (see :func:`split_touching`).
        voxel_size: (z, y, x) voxel size for the distances; default the mask's own (OME-Zarr, NIfTI), else
            isotropic.

    Returns:
        ``{"output": path, "instances": N, "shape": [Z, Y, X]}``, with ``"components"`` (before the split)
        and ``"split"`` (how many components were split) when ``split="watershed"``.
    """
    if connectivity not in (6, 18, 26):
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}.")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}.")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}.")
    if split == "none" and probabilities is not None:
        raise ValueError("probabilities are used only by split='watershed' (--split watershed).")
    if not float(seed_height) > 0:
        raise ValueError(f"seed_height must be > 0 (voxels), got {seed_height}.")
    voxel_size = _check_voxel_size(voxel_size)
    output = Path(output)
    if output.exists() and not overwrite:
        raise DataError(f"{output} already exists; pass --overwrite true to replace it.")
    structure = ndimage.generate_binary_structure(3, _RANK[connectivity])
    with open_volume(masks, key) as vol:
        plan = BlockPlan(vol.shape, block_shape)
        prob_volume = None
        if probabilities is not None:
            prob_volume = open_volume(probabilities)
            if prob_volume.shape != vol.shape:
                prob_volume.close()
                raise DataError(f"probabilities {probabilities} have shape {list(prob_volume.shape)}, but the masks "
                                f"{masks} have {list(vol.shape)}; expected the same (Z, Y, X).")
        sampling = voxel_size or vol.voxel_size
        zarr_out = is_zarr_path(output)
        scratch = output if zarr_out else output.parent / f".{output.name}.instances.zarr"
        for path in {output, scratch}:
            if path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        chunks = (min(plan.block_shape[0], 64), 256, 256)
        array = create_ome_zarr_image(scratch, "instances", vol.shape, np.uint64, chunks, vol.voxel_size, vol.unit)
        writer = ZarrBoxWriter(Path(scratch) / "0")
        stride = int(np.prod(plan.block_shape))  # at most this many labels in a block: offsets never collide
        sizes: dict[int, int] = {}
        boxes: dict[int, tuple[int, ...]] = {}  # provisional label -> (z0, y0, x0, z1, y1, x1)
        for block in plan:  # pass 1
            labels, n = ndimage.label(vol.read(block.core) != 0, structure=structure)
            origin = [s.start for s in block.core]
            offset = block.index * stride
            for local, box in enumerate(ndimage.find_objects(labels), start=1):
                if box is not None:
                    boxes[offset + local] = tuple(s.start + o for s, o in zip(box, origin)) + tuple(
                        s.stop + o for s, o in zip(box, origin))
            labels = labels.astype(np.uint64)
            labels[labels > 0] += np.uint64(offset)
            writer.write(block.core, labels)
            ids, counts = np.unique(labels[labels > 0], return_counts=True)
            sizes.update(zip(ids.tolist(), counts.tolist()))
    uf = _UnionFind()
    for block in plan:  # pass 2
        for axis in range(3):
            c = block.core[axis].start
            if c == 0:
                continue
            box = [slice(max(0, s.start - 1), min(n, s.stop + 1)) for s, n in zip(block.core, plan.shape)]
            box[axis] = slice(c - 1, c + 1)
            pair = np.moveaxis(np.asarray(array[tuple(box)]), axis, 0)
            for a, b in _face_pairs(pair[0], pair[1], connectivity).tolist():
                uf.union(a, b)
    total: dict[int, int] = {}
    extent: dict[int, list[int]] = {}
    for label, size in sizes.items():
        root = uf.find(label)
        total[root] = total.get(root, 0) + size
        b = boxes[label]
        e = extent.setdefault(root, list(b))
        extent[root] = [min(x, y) for x, y in zip(e[:3], b[:3])] + [max(x, y) for x, y in zip(e[3:], b[3:])]
    kept = sorted(r for r, s in total.items() if s >= min_size)
    final = {r: i + 1 for i, r in enumerate(kept)}
    keys = np.array(sorted(sizes), dtype=np.uint64)
    values = np.array([final.get(uf.find(k), 0) for k in keys.tolist()], dtype=np.uint64)
    for block in plan:  # pass 3
        labels = np.asarray(array[block.core])
        out = np.zeros(labels.shape, np.uint64)
        fg = labels > 0
        out[fg] = values[np.searchsorted(keys, labels[fg])]
        writer.write(block.core, out)
    count, result = len(kept), {}
    if split == "watershed":  # pass 4: one object at a time, in its bounding box
        count, was_split = _split_components(array, [extent[r] for r in kept], prob_volume, sampling, seed_height, connectivity)
        result = {"components": len(kept), "split": was_split}
    if prob_volume is not None:
        prob_volume.close()
    if not zarr_out:
        dtype = np.uint32 if count < 2**32 - 1 else np.uint64
        write_volume(output, np.asarray(array[...]).astype(dtype), overwrite=True)
        shutil.rmtree(scratch)
    return {"output": str(output), "instances": count, "shape": list(plan.shape), **result}


def _split_components(array, extents, prob_volume, sampling, seed_height, connectivity) -> tuple[int, int]:
    """Split the components 1..N of ``array`` in place; the parts after the first get the IDs N+1, N+2...

    IDs up to N belong to one component each and new IDs are above N, so the box of a component holds
    its own voxels exactly where the ID equals it, also after its neighbours were split.
    """
    was_split = 0
    next_id = len(extents) + 1
    for i, e in enumerate(extents, start=1):
        box = tuple(slice(a, b) for a, b in zip(e[:3], e[3:]))
        crop = np.asarray(array[box])
        mask = crop == i
        prob = None
        if prob_volume is not None:
            prob = prob_volume.read(box)
            if np.issubdtype(prob.dtype, np.integer):
                prob = prob.astype(np.float32) / float(np.iinfo(prob.dtype).max)
        parts, n = split_touching(mask, prob, sampling, seed_height, connectivity)
        if n > 1:
            for k in range(2, n + 1):
                crop[parts == k] = next_id + k - 2
            array[box] = crop
            next_id += n - 1
            was_split += 1
    return next_id - 1, was_split
