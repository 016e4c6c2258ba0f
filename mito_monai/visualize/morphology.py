"""Pictures of a morphology table: histograms of volume and sphericity, and the largest objects outlined on their
middle slice (matplotlib, no pyplot state). Used by ``measure --plot`` and by the run report."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from scipy import ndimage

from mito_monai.visualize.figures import _image, _note, figure_png

__all__ = ["MEASUREMENTS_FILE", "find_measurements", "morphology_figure", "write_morphology_plot"]

_SHORT_UNITS = {"nanometer": "nm", "nanometre": "nm", "micrometer": "µm", "micrometre": "µm", "angstrom": "Å",
                "millimeter": "mm", "millimetre": "mm"}
#: the table a bundle's inference writes with ``--measure true`` (beside its outputs)
MEASUREMENTS_FILE = "measurements.csv"


def _outline(crop: Mapping[str, Any]) -> np.ndarray:
    """RGB (H, W, 3): the image (or grey objects) with other objects dimmed blue and this one outlined yellow."""
    mask, others = np.asarray(crop["mask"], bool), np.asarray(crop["others"], bool)
    image = crop.get("image")
    if image is None:
        grey = np.where(mask | others, 0.55, 0.15)
    else:
        image = np.asarray(image, np.float32)
        lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
        grey = np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[others] = 0.6 * rgb[others] + 0.4 * np.array([0.0, 0.45, 0.70])
    edge = mask & ~ndimage.binary_erosion(mask)
    rgb[edge] = (1.0, 0.85, 0.0)
    return rgb


def morphology_figure(table, objects: Sequence[Mapping[str, Any]] = (), unit: str | None = None) -> Figure:
    """Histograms of volume (log scale) and sphericity, and below them the largest objects on their middle slice.

    Args:
        table: the morphology table (``volume``, ``sphericity``, ``touches_border`` columns).
        objects: crops from :func:`mito_monai.morphology.largest_object_slices` (may be empty).
        unit: the length unit for the axis label.
    """
    columns = max(len(objects), 2)
    fig = Figure(figsize=(max(10, 2.2 * columns), 6.4 if objects else 3.4), layout="constrained")
    grid = fig.add_gridspec(2 if objects else 1, columns)
    half = columns // 2
    ax_vol, ax_sph = fig.add_subplot(grid[0, :half]), fig.add_subplot(grid[0, half:])
    unit = _SHORT_UNITS.get(str(unit).lower(), unit) if unit else "voxel"
    if len(table) == 0:
        _note(ax_vol, "no instances")
        _note(ax_sph, "no instances")
    else:
        inner = ~np.asarray(table["touches_border"], bool)
        volume = np.asarray(table["volume"], np.float64)
        sphericity = np.asarray(table["sphericity"], np.float64)
        positive = volume[volume > 0]
        bins = np.geomspace(positive.min(), positive.max() * 1.0001, 30) if positive.min() < positive.max() else 10
        for ax, values, bins_, xlabel in ((ax_vol, volume, bins, f"volume ({unit}³)"),
                                          (ax_sph, sphericity, np.linspace(0, 1.05, 31), "sphericity")):
            ax.hist([values[inner], values[~inner]], bins=bins_, stacked=True, color=["#0072B2", "#E69F00"],
                    label=["interior", "touching the border"])
            ax.set_xlabel(xlabel)
            ax.set_ylabel("instances")
        if not isinstance(bins, int):
            ax_vol.set_xscale("log")
        ax_vol.set_title(f"{len(table)} instances, median volume {np.median(volume):.4g} {unit}³", fontsize=10)
        ax_sph.set_title(f"median sphericity {np.nanmedian(sphericity):.3f}", fontsize=10)
        ax_sph.legend(fontsize=8)
    for i, crop in enumerate(objects):
        ax = fig.add_subplot(grid[1, i])
        _image(ax, _outline(crop), f"#{int(crop['label'])}, z {int(crop['z'])}\n{float(crop['volume']):.4g} {unit}³, "
                                  f"sph. {float(crop['sphericity']):.2f}")
    return fig


def find_measurements(folder: str | os.PathLike) -> Path | None:
    """The measurements table of a run or inference folder: ``folder/measurements.csv`` or
    ``folder/segmentation/measurements.csv`` (where a bundle's inference writes it), else None."""
    folder = Path(folder)
    for candidate in (folder / MEASUREMENTS_FILE, folder / "segmentation" / MEASUREMENTS_FILE):
        if candidate.is_file():
            return candidate
    return None


def measurement_figure_from_files(table_path: str | os.PathLike) -> Figure:
    """:func:`morphology_figure` of a table file, with its crops and unit when they are beside it."""
    import json

    from mito_monai.morphology import default_objects_path, load_object_slices, read_table, summary_path_for

    table = read_table(table_path)
    objects_path = default_objects_path(table_path)
    objects = load_object_slices(objects_path) if objects_path.is_file() else []
    summary_path = summary_path_for(table_path)
    unit = json.loads(summary_path.read_text()).get("unit") if summary_path.is_file() else None
    return morphology_figure(table, objects, unit)


def write_morphology_plot(table_path: str | os.PathLike, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Draw :func:`measurement_figure_from_files` into the PNG ``path`` (an existing one only with ``overwrite``)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite true to replace it, or choose another --plot.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(figure_png(measurement_figure_from_files(table_path)))
    return path
