"""The per-instance morphology table: its columns, how it is built from the statistics, and its files.

One row per instance, IDs ascending. Lengths, areas and volumes are in the voxel size's unit (``unit`` in the
summary; voxels when no voxel size is known); ``centroid_*`` and ``box_*`` are voxel indices (``box_*1`` one
past the last voxel), so that a row can be found in the volume.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mito_monai.morphology.block_stats import ObjectStatistics
from mito_monai.morphology.geometry import GEOMETRY_COLUMNS, SKELETON_COLUMNS

__all__ = ["COLUMNS", "TABLE_SUFFIXES", "build_table", "check_table_path", "read_table", "write_table"]

#: column -> meaning (the table's data dictionary; README and docstrings refer to it)
COLUMNS = {
    "label": "instance ID",
    "voxels": "voxel count",
    "volume": "voxels x voxel volume (unit^3)",
    "box_z0": "bounding box, first z index", "box_y0": "first y index", "box_x0": "first x index",
    "box_z1": "one past the last z index", "box_y1": "one past the last y index", "box_x1": "one past the last x index",
    "centroid_z": "centroid (voxel index)", "centroid_y": "centroid (voxel index)", "centroid_x": "centroid (voxel index)",
    "surface_area": "marching-cubes surface area (unit^2)",
    "sphericity": "pi^(1/3) (6 volume)^(2/3) / surface_area; 1 for a ball",
    "axis_major": "full principal axis lengths of the moment ellipsoid (unit)", "axis_middle": "", "axis_minor": "",
    "elongation": "axis_major / axis_minor (1 for a ball)",
    "solidity": "voxels / voxels of the convex hull",
    "mean_intensity": "mean image value (with --image)",
    "mean_probability": "mean foreground probability (with --probabilities)",
    "touches_border": "the object reaches the volume's border (it may be truncated)",
    "neighbours": "number of other instances it touches",
    "skeleton_branches": "skeleton branches (with --skeleton true)",
    "skeleton_length": "skeleton length (unit, with --skeleton true)",
}
#: output suffix -> pandas writer format
TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_INT_COLUMNS = ("label", "voxels", "box_z0", "box_y0", "box_x0", "box_z1", "box_y1", "box_x1", "neighbours",
                "skeleton_branches")


def columns_for(image: bool, probabilities: bool, skeleton: bool) -> list[str]:
    """The column names of a table with these optional parts, in order."""
    skip = set()
    if not image:
        skip.add("mean_intensity")
    if not probabilities:
        skip.add("mean_probability")
    if not skeleton:
        skip.update(SKELETON_COLUMNS)
    return [c for c in COLUMNS if c not in skip]


def build_table(
    stats: ObjectStatistics,
    geometry: Mapping[int, Mapping[str, float]],
    shape: Sequence[int],
    spacing: Sequence[float],
    skeleton: bool = False,
):
    """The table (a ``pandas.DataFrame``) from the merged statistics and the per-object geometry by ID."""
    import pandas as pd

    n = len(stats)
    voxel_volume = float(np.prod(spacing))
    volume = stats.voxels.astype(np.float64) * voxel_volume
    counts = np.maximum(stats.voxels, 1).astype(np.float64)
    data: dict[str, np.ndarray] = {"label": stats.ids.astype(np.int64), "voxels": stats.voxels, "volume": volume}
    for k, axis in enumerate("zyx"):
        data[f"box_{axis}0"] = stats.box_min[:, k]
    for k, axis in enumerate("zyx"):
        data[f"box_{axis}1"] = stats.box_max[:, k]
    for k, axis in enumerate("zyx"):
        data[f"centroid_{axis}"] = stats.coordinate_sums[:, k] / counts if n else np.zeros(0)
    ids = stats.ids.tolist()
    for column in GEOMETRY_COLUMNS + (SKELETON_COLUMNS if skeleton else ()):
        data[column] = np.array([geometry[i][column] for i in ids], np.float64)
    area = data["surface_area"]
    with np.errstate(divide="ignore", invalid="ignore"):
        data["sphericity"] = np.where(area > 0, math.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / np.where(area > 0, area, 1), np.nan)
        data["elongation"] = np.where(data["axis_minor"] > 0, data["axis_major"] / np.where(data["axis_minor"] > 0, data["axis_minor"], 1), np.nan)
    if stats.image_sums is not None:
        data["mean_intensity"] = stats.image_sums / counts
    if stats.probability_sums is not None:
        data["mean_probability"] = stats.probability_sums / counts
    shape = np.asarray(shape)
    data["touches_border"] = ((stats.box_min == 0) | (stats.box_max == shape)).any(axis=1) if n else np.zeros(0, bool)
    data["neighbours"] = stats.neighbours
    order = columns_for(stats.image_sums is not None, stats.probability_sums is not None, skeleton)
    table = pd.DataFrame({c: data[c] for c in order})
    for c in _INT_COLUMNS:
        if c in table:
            table[c] = table[c].astype(np.int64)
    table["touches_border"] = table["touches_border"].astype(bool)
    return table


def check_table_path(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """``path`` as a table output: a known suffix, and not an existing file unless ``overwrite``."""
    path = Path(path)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise ValueError(f"--output {path}: expected a table file ending in {', '.join(TABLE_SUFFIXES)}.")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite true to replace it, or choose another --output.")
    if path.is_dir():
        raise FileExistsError(f"{path} is a folder; expected a table file.")
    return path


def write_table(table, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the table as CSV or Parquet (by suffix), atomically (a partial file never has the final name)."""
    path = check_table_path(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if TABLE_SUFFIXES[path.suffix.lower()] == "csv":
        table.to_csv(tmp, index=False)
    else:
        table.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def read_table(path: str | os.PathLike):
    """Read a table written by :func:`write_table` (a DataError naming the file if it is not one)."""
    import pandas as pd

    from mito_monai.io import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; expected a measurements table (.csv or .parquet).")
    try:
        table = pd.read_parquet(path) if TABLE_SUFFIXES.get(path.suffix.lower()) == "parquet" else pd.read_csv(path)
    except Exception as e:  # pandas/pyarrow raise many types for a broken file
        raise DataError(f"{path}: cannot be read as a measurements table ({type(e).__name__}: {e}).") from None
    missing = [c for c in ("label", "volume", "sphericity") if c not in table]
    if missing:
        raise DataError(f"{path}: no column {missing[0]!r}; expected a table written by `python -m mito_monai measure`.")
    return table
