"""The summary of a morphology table: count, density, volume fraction and the spread of volume and sphericity."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["format_summary", "summarize", "write_summary"]


def _quartiles(values: np.ndarray) -> dict[str, float | None]:
    values = values[np.isfinite(values)]
    if not len(values):
        return {"q1": None, "median": None, "q3": None}
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"q1": float(q1), "median": float(median), "q3": float(q3)}


def summarize(
    table,
    shape: Sequence[int],
    spacing: Sequence[float],
    unit: str | None = None,
    micrometres_per_unit: float | None = None,
) -> dict[str, Any]:
    """The summary of a table (see :mod:`mito_monai.morphology.table`) measured in a volume of ``shape``.

    Returns:
        ``count``, ``count_interior`` (not touching the border), ``volume_fraction`` (instance voxels / all
        voxels), ``region_volume`` (unit^3), ``density_per_um3`` (count per µm³; None when the unit is not
        known), ``volume`` and ``sphericity`` (``q1``, ``median``, ``q3``), ``unit``, ``voxel_size``,
        ``shape``; with skeleton columns also ``skeleton_branches`` and ``skeleton_length`` (totals).
    """
    total = int(np.prod(shape))
    region = total * float(np.prod(spacing))
    count = int(len(table))
    out: dict[str, Any] = {
        "count": count,
        "count_interior": int((~table["touches_border"].astype(bool)).sum()) if count else 0,
        "volume_fraction": float(table["voxels"].sum()) / total if total else 0.0,
        "region_volume": region,
        "density_per_um3": None,
        "volume": _quartiles(table["volume"].to_numpy(np.float64)),
        "sphericity": _quartiles(table["sphericity"].to_numpy(np.float64)),
        "unit": unit,
        "voxel_size": [float(s) for s in spacing],
        "shape": [int(s) for s in shape],
    }
    if micrometres_per_unit:
        out["density_per_um3"] = count / (region * micrometres_per_unit**3)
    if "skeleton_branches" in table:
        out["skeleton_branches"] = int(table["skeleton_branches"].sum())
        out["skeleton_length"] = float(table["skeleton_length"].sum())
    return out


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as a two-column Markdown table (for the terminal)."""
    unit = summary.get("unit") or "voxel"
    rows = [
        ("instances", summary["count"]),
        ("not touching the border", summary["count_interior"]),
        ("density (per µm³)", summary["density_per_um3"]),
        ("volume fraction", summary["volume_fraction"]),
    ]
    for key, label in (("volume", f"volume ({unit}³)"), ("sphericity", "sphericity")):
        q = summary[key]
        rows.append((f"{label} median [q1, q3]", f"{_fmt(q['median'])} [{_fmt(q['q1'])}, {_fmt(q['q3'])}]"))
    if "skeleton_branches" in summary:
        rows += [("skeleton branches", summary["skeleton_branches"]), (f"skeleton length ({unit})", summary["skeleton_length"])]
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'measure':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name:<{width}} | {_fmt(value)} |" for name, value in rows]
    return "\n".join(lines) + "\n"


def write_summary(summary: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write the summary as JSON (atomically)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, path)
    return path
