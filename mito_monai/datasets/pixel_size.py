"""Pixel-size options of the bundles: the in-plane nm per pixel of the data, and the rescale factor between two.

- :func:`pixel_size_option`: one option's value as nm per pixel (a number > 0), ``None`` when not given, or
  ``auto``: the pixel size of the layout's dataset (``vnc3`` 4.6, ``lucchi`` / ``lucchi_pp`` 5.0, ``mitoem``
  8.0; the ``folder`` layout has none);
- :func:`resolution_scale`: the factor r4mito's ``match_resolution`` rescales the target by
  (target pixel size / source pixel size), or ``None`` when the switch is off;
- :func:`rescale_factor`: the factor inference and evaluation rescale an input by (its pixel size / the model's),
  or ``None`` when neither is given.

Every bad value is a ``ValueError`` that names the option.
"""

from __future__ import annotations

import math
from typing import Any

from mito_monai.datasets.registry import get_layout

__all__ = ["layout_pixel_size", "pixel_size_option", "rescale_factor", "resolution_scale"]

_UNSET = ("", "none", "null")


def layout_pixel_size(layout: str) -> float | None:
    """The in-plane pixel size (nm) of the dataset of ``layout``, ``None`` when the layout has no fixed one."""
    return get_layout(layout).pixel_size


def pixel_size_option(value: Any, option: str, layout: str | None = None) -> float | None:
    """The pixel size (nm per pixel, > 0) an option gives, ``None`` when it is not given (``None``, ``""``,
    ``"none"``, ``"null"``).

    Args:
        value: a number, a numeric string, ``"auto"`` (the pixel size of ``layout``'s dataset) or unset.
        option: the option's name, for the messages (e.g. ``"target_pixel_size"``).
        layout: the dataset layout ``auto`` reads.

    Raises:
        ValueError: naming ``option``, for a value that is not a number > 0, or ``auto`` without a layout
            that knows its pixel size.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in _UNSET):
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        known = None if layout is None else layout_pixel_size(layout)
        if known is None:
            raise ValueError(
                f"--{option} auto: the layout {layout!r} has no known pixel size; give the number (nm per pixel)."
            )
        return float(known)
    try:
        size = float(value)
    except (TypeError, ValueError):
        size = math.nan
    if isinstance(value, bool) or not math.isfinite(size) or size <= 0:
        raise ValueError(f"--{option} must be the in-plane pixel size in nm (a number > 0) or auto, got {value!r}.")
    return size


def _scale(sizes: dict[str, Any], layouts: dict[str, str | None], why: str) -> float:
    """``sizes``' first value / its second, both required (a ValueError naming the missing options)."""
    values = {name: pixel_size_option(value, name, layouts.get(name)) for name, value in sizes.items()}
    missing = [name for name, value in values.items() if value is None]
    if missing:
        names = " and ".join(f"--{name}" for name in sizes)
        raise ValueError(
            f"{why} needs {names} (in-plane nm per pixel, > 0, or auto for a known dataset layout); "
            f"missing: {', '.join('--' + m for m in missing)}."
        )
    numerator, denominator = values.values()
    return numerator / denominator


def resolution_scale(
    match_resolution: bool | str,
    source_pixel_size: Any = None,
    target_pixel_size: Any = None,
    source_layout: str | None = None,
    target_layout: str | None = None,
) -> float | None:
    """The in-plane factor that gives target slices the source's pixel size: target / source pixel size.

    ``None`` when ``match_resolution`` is false (the pixel sizes are then not read). With it, both pixel sizes
    are required (numbers > 0, or ``auto`` for the layout's dataset; see :func:`pixel_size_option`).

    Args:
        match_resolution: the switch (a bool or a string such as ``"true"``).
        source_pixel_size, target_pixel_size: the options' values.
        source_layout, target_layout: the layouts ``auto`` reads.
    """
    from monai.utils import str2bool

    if not str2bool(match_resolution):
        return None
    return _scale(
        {"target_pixel_size": target_pixel_size, "source_pixel_size": source_pixel_size},
        {"target_pixel_size": target_layout, "source_pixel_size": source_layout},
        "--match_resolution true",
    )


def rescale_factor(pixel_size: Any = None, model_pixel_size: Any = None, layout: str | None = None) -> float | None:
    """The in-plane factor an input is rescaled by for a model trained at another pixel size: ``pixel_size`` /
    ``model_pixel_size``; ``None`` when neither is given, a ValueError naming the other when only one is.

    Args:
        pixel_size: the input's pixel size (a number > 0, or ``auto`` for ``layout``'s dataset).
        model_pixel_size: the pixel size the model was trained at (its source's, or the target's rescaled one).
        layout: the input's layout, for ``pixel_size auto``.
    """
    sizes = {"pixel_size": pixel_size, "model_pixel_size": model_pixel_size}
    if all(pixel_size_option(value, name, layout) is None for name, value in sizes.items()):
        return None
    return _scale(sizes, {"pixel_size": layout}, "rescaling the input to the model's pixel size")
