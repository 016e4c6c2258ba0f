"""3D instances from a semantic mask, block by block, merged across block borders.

Three passes over a :class:`~mito_monai.inference.blocks.BlockPlan` (no halo), so memory is set by the
block size: (1) every block is labelled on its own with :func:`scipy.ndimage.label` (6- or
26-connectivity) and its labels are offset to be unique in the volume; (2) on every lower face of a block
the two planes that meet there are compared (with the diagonal neighbours for 26-connectivity) and
touching labels are united (union-find); (3) every block is relabelled to consecutive IDs 1..N, dropping
instances smaller than ``min_size`` voxels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from mito_monai.data import DataError, ZarrBoxWriter, create_ome_zarr_image, is_zarr_path, open_volume, write_volume
from mito_monai.inference.blocks import BlockPlan

__all__ = ["label_instances"]


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


def label_instances(
    masks: str | os.PathLike,
    output: str | os.PathLike,
    key: str | None = None,
    min_size: int = 0,
    connectivity: int = 26,
    block_shape: tuple[int, int, int] = (64, 1024, 1024),
    overwrite: bool = False,
) -> dict:
    """Label the 3D connected components of the mask at ``masks`` (non-zero = foreground) into ``output``.

    ``output`` ending in ``.zarr`` is written block by block as an OME-Zarr label image (uint64);
    any other supported format gets the whole volume at the end.

    Returns:
        ``{"output": path, "instances": N, "shape": [Z, Y, X]}``.
    """
    if connectivity not in (6, 18, 26):
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}.")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}.")
    output = Path(output)
    if output.exists() and not overwrite:
        raise DataError(f"{output} already exists; pass --overwrite true to replace it.")
    structure = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    with open_volume(masks, key) as vol:
        plan = BlockPlan(vol.shape, block_shape)
        zarr_out = is_zarr_path(output)
        scratch = output if zarr_out else output.parent / f".{output.name}.instances.zarr"
        for path in {output, scratch}:
            if path.exists():
                import shutil

                shutil.rmtree(path) if path.is_dir() else path.unlink()
        chunks = (min(plan.block_shape[0], 64), 256, 256)
        array = create_ome_zarr_image(scratch, "instances", vol.shape, np.uint64, chunks, vol.voxel_size, vol.unit)
        writer = ZarrBoxWriter(Path(scratch) / "0")
        stride = int(np.prod(plan.block_shape))  # at most this many labels in a block: offsets never collide
        sizes: dict[int, int] = {}
        for block in plan:  # pass 1
            labels, n = ndimage.label(vol.read(block.core) != 0, structure=structure)
            labels = labels.astype(np.uint64)
            offset = np.uint64(block.index * stride)
            labels[labels > 0] += offset
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
    for label, size in sizes.items():
        root = uf.find(label)
        total[root] = total.get(root, 0) + size
    kept = sorted(r for r, s in total.items() if s >= min_size)
    final = {r: i + 1 for i, r in enumerate(kept)}
    keys = np.array(sorted(sizes), dtype=np.uint64)
    values = np.array([final.get(uf.find(k), 0) for k in keys.tolist()], dtype=np.uint64)
    dtype = np.uint32 if len(kept) < 2**32 - 1 else np.uint64
    for block in plan:  # pass 3
        labels = np.asarray(array[block.core])
        out = np.zeros(labels.shape, np.uint64)
        fg = labels > 0
        out[fg] = values[np.searchsorted(keys, labels[fg])]
        writer.write(block.core, out)
    if not zarr_out:
        import shutil

        write_volume(output, np.asarray(array[...]).astype(dtype), overwrite=True)
        shutil.rmtree(scratch)
    return {"output": str(output), "instances": len(kept), "shape": list(plan.shape)}
