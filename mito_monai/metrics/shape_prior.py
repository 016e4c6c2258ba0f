"""A morphological prior as a label-free score: how far the shapes a model segments are from the source's.

Mitochondria have a characteristic shape in every EM volume: compact, convex-ish profiles on a section. A model
that does not transfer segments membranes, vesicles and noise as well, whose profiles are thin, curved or
ragged. So the per-object *solidity* (area over the area of the convex hull) of the 2D profiles a model
predicts on the unlabelled target can be compared with that of the *source labels*, which are the only
labels read. This follows the idea of the morphology-based stopping criterion of Franco-Barranco et al.
(2022), who select EM domain-adaptation models by morphological priors taken from the source domain; the
exact statistic here (the 1-Wasserstein distance between the two solidity distributions) is ours.

- :func:`object_shapes`: area and solidity of each 2D connected component of a stack of masks (Z, Y, X);
  components touching the section border (cut, so their shape is unknown) and components smaller than
  ``min_area`` pixels are left out, and counted.
- :func:`shape_distance`: the 1-Wasserstein distances between two such tables: ``solidity_distance`` (the
  criterion; 0 = the same distribution, lower is better) and ``log_area_distance`` (of ``log10`` areas in
  pixels, reported only: sizes differ between tissues and resolutions, so it is no criterion).

No function here reads a target label: the reference table is computed from source labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from scipy.stats import wasserstein_distance
from skimage.measure import regionprops_table

__all__ = ["object_shapes", "shape_distance"]

_EIGHT = np.ones((3, 3), dtype=bool)


def object_shapes(masks: Any, min_area: int = 16) -> dict[str, Any]:
    """Area (pixels) and solidity of the 2D objects of binary masks.

    Args:
        masks: (Z, Y, X) or (Y, X) array, nonzero = mitochondria. Each section is labelled on its own
            (8-connectivity).
        min_area: objects with fewer pixels are left out (their solidity is about 1 whatever they are).

    Returns:
        ``{"area": float array (N,), "solidity": float array (N,), "objects": N, "left_out_border": int,
        "left_out_small": int, "sections": Z}``.

    Raises:
        ValueError: for masks that are not 2D or 3D, or ``min_area`` < 1.
    """
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise ValueError(f"masks must be (Z, Y, X) or (Y, X), got shape {masks.shape}.")
    if int(min_area) < 1:
        raise ValueError(f"min_area must be >= 1 pixel, got {min_area}.")
    areas, solidities = [], []
    border = small = 0
    for section in masks:
        labels, count = ndimage.label(section != 0, structure=_EIGHT)
        if count == 0:
            continue
        table = regionprops_table(labels, properties=("area", "solidity", "bbox"))
        h, w = section.shape
        touches = (table["bbox-0"] == 0) | (table["bbox-1"] == 0) | (table["bbox-2"] == h) | (table["bbox-3"] == w)
        tiny = table["area"] < min_area
        border += int(touches.sum())
        small += int((tiny & ~touches).sum())
        keep = ~touches & ~tiny
        areas.append(table["area"][keep].astype(np.float64))
        solidities.append(table["solidity"][keep].astype(np.float64))
    area = np.concatenate(areas) if areas else np.zeros(0)
    solidity = np.concatenate(solidities) if solidities else np.zeros(0)
    return {"area": area, "solidity": solidity, "objects": int(area.size), "left_out_border": border,
            "left_out_small": small, "sections": int(masks.shape[0])}


def shape_distance(predicted: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """Distances between the object tables of a model's masks and of the source labels (:func:`object_shapes`).

    Returns:
        ``{"solidity_distance", "log_area_distance", "objects_per_section", "reference_objects_per_section",
        "median_solidity", "reference_median_solidity"}``. A model that predicts no whole object gets
        ``solidity_distance`` = ``log_area_distance`` = ``inf`` (never preferred).

    Raises:
        ValueError: when the reference has no object (no prior to compare with).
    """
    if reference["objects"] == 0:
        raise ValueError("the reference (source labels) has no whole object of at least min_area pixels: no shape prior.")
    out = {
        "objects_per_section": predicted["objects"] / max(predicted["sections"], 1),
        "reference_objects_per_section": reference["objects"] / max(reference["sections"], 1),
        "reference_median_solidity": float(np.median(reference["solidity"])),
    }
    if predicted["objects"] == 0:
        return {**out, "solidity_distance": float("inf"), "log_area_distance": float("inf"), "median_solidity": float("nan")}
    return {
        **out,
        "solidity_distance": float(wasserstein_distance(predicted["solidity"], reference["solidity"])),
        "log_area_distance": float(wasserstein_distance(np.log10(predicted["area"]), np.log10(reference["area"]))),
        "median_solidity": float(np.median(predicted["solidity"])),
    }
