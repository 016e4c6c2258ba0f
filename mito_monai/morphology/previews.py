"""The largest objects on their middle slice: small 2D crops for a picture of a measurement (no 3D rendering).

For each of the ``count`` largest objects (by volume) the slice through the middle of its bounding box is read
(only that slice of its box, grown by a margin): the instance IDs, and the image when one was measured. The
crops are saved as one ``.npz`` beside the table, so the run report draws them without the volumes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["largest_object_slices", "load_object_slices", "save_object_slices"]


def largest_object_slices(table, instances: Any, image: Any = None, count: int = 6, margin: int = 8) -> list[dict]:
    """The middle-slice crops of the ``count`` largest objects of ``table``.

    Args:
        table: the morphology table (``label``, ``volume``, ``box_*`` columns).
        instances, image: opened volumes (``read(box)``); ``image`` may be None.
        count: how many objects.
        margin: voxels of context around each box (clipped to the volume).

    Returns:
        dicts with ``label``, ``z`` (the slice), ``volume``, ``sphericity``, ``mask`` (bool (H, W): this object),
        ``others`` (bool: other objects) and ``image`` (float (H, W) or None).
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}.")
    out = []
    shape = instances.shape
    for row in table.nlargest(count, "volume").itertuples(index=False):
        z = (int(row.box_z0) + int(row.box_z1) - 1) // 2
        box = (slice(z, z + 1),
               slice(max(0, int(row.box_y0) - margin), min(shape[1], int(row.box_y1) + margin)),
               slice(max(0, int(row.box_x0) - margin), min(shape[2], int(row.box_x1) + margin)))
        labels = np.asarray(instances.read(box))[0]
        crop = None if image is None else np.asarray(image.read(box))[0].astype(np.float32)
        out.append({"label": int(row.label), "z": z, "volume": float(row.volume), "sphericity": float(row.sphericity),
                    "mask": labels == row.label, "others": (labels != 0) & (labels != row.label), "image": crop})
    return out


def save_object_slices(objects: list[dict], path: str | os.PathLike) -> Path:
    """Write the crops of :func:`largest_object_slices` as one compressed ``.npz`` (atomically)."""
    arrays: dict[str, np.ndarray] = {"count": np.asarray(len(objects))}
    for i, obj in enumerate(objects):
        for key, value in obj.items():
            if value is not None:
                arrays[f"{i}.{key}"] = np.asarray(value)
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_object_slices(path: str | os.PathLike) -> list[dict]:
    """Read the crops written by :func:`save_object_slices`."""
    with np.load(path) as data:
        objects = []
        for i in range(int(data["count"])):
            obj = {key: data[f"{i}.{key}"] for key in ("label", "z", "volume", "sphericity", "mask", "others")}
            obj = {k: (v.item() if v.ndim == 0 else v) for k, v in obj.items()}
            obj["image"] = data[f"{i}.image"] if f"{i}.image" in data else None
            objects.append(obj)
    return objects
