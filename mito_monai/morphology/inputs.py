"""The volumes a measurement reads: instance IDs, and optionally the raw image and foreground probabilities.

Everything is opened lazily through :func:`mito_monai.io.open_volume` (any supported format, read box by
box) and checked before any voxel is read: the instances hold integer IDs, the other volumes have the same
(Z, Y, X) shape and, where both files store a voxel size, the same voxel size. Every problem is a one-line
:class:`~mito_monai.io.DataError` naming the file and what was expected.

:class:`ArrayVolume` gives an in-memory array the same ``shape`` / ``dtype`` / ``voxel_size`` / ``read(box)``
interface, so that the napari plugin measures a labels layer with the same code.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mito_monai.io import DataError, open_volume
from mito_monai.inference.instances import _check_voxel_size

__all__ = ["ArrayVolume", "MeasureInputs", "open_measure_inputs", "parse_voxel_size", "UNIT_TO_MICROMETRE"]

#: length unit (OME-Zarr axis unit names and common short forms) -> micrometres
UNIT_TO_MICROMETRE = {
    "angstrom": 1e-4, "nanometer": 1e-3, "nanometre": 1e-3, "nm": 1e-3, "micrometer": 1.0, "micrometre": 1.0,
    "micron": 1.0, "um": 1.0, "µm": 1.0, "millimeter": 1e3, "millimetre": 1e3, "mm": 1e3,
}


class ArrayVolume:
    """An in-memory (Z, Y, X) array with the read interface of :class:`mito_monai.io.Volume`.

    Args:
        array: the voxels (a 2D array is one slice).
        voxel_size: (z, y, x) physical voxel size, or None.
        unit: the unit of ``voxel_size``, or None.
        name: how messages name it (e.g. a napari layer name).
    """

    def __init__(self, array: Any, voxel_size: Sequence[float] | None = None, unit: str | None = None,
                 name: str = "array") -> None:
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3:
            raise DataError(f"{name} has shape {array.shape}; expected a 2D slice or a (Z, Y, X) volume.")
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = array.dtype
        self.voxel_size = None if voxel_size is None else tuple(float(v) for v in voxel_size)
        self.unit = unit
        self.name = name

    def read(self, box: Sequence[slice] | None = None) -> np.ndarray:
        return self.array if box is None else self.array[tuple(box)]

    def close(self) -> None:
        pass

    def __str__(self) -> str:
        return self.name


def parse_voxel_size(voxel_size: Any) -> tuple[float, float, float] | None:
    """``"30,8,8"``, ``(30, 8, 8)`` or None -> (z, y, x) floats (as ``instances --voxel_size``); a ValueError for
    anything else."""
    values = _check_voxel_size(voxel_size)
    if values is not None and not all(math.isfinite(v) for v in values):
        raise ValueError(f"voxel_size must be three finite numbers z,y,x (e.g. 30,8,8), got {voxel_size!r}.")
    return values


@dataclass
class MeasureInputs:
    """The opened volumes of one measurement and the voxel size it uses.

    Attributes:
        instances: the instance IDs (integer, 0 = background).
        image: the raw image for the mean intensity, or None.
        probabilities: foreground probabilities for the mean probability, or None.
        spacing: (z, y, x) voxel size used (``--voxel_size``, else the files' own, else 1, 1, 1).
        unit: the unit of ``spacing`` (``--unit``, else the files' own), or None when unknown.
        spacing_source: where ``spacing`` came from (``"--voxel_size"``, a file name, or ``"none (voxels)"``).
    """

    instances: Any
    image: Any = None
    probabilities: Any = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    unit: str | None = None
    spacing_source: str = "none (voxels)"

    def close(self) -> None:
        for v in (self.instances, self.image, self.probabilities):
            if v is not None:
                v.close()

    def __enter__(self) -> MeasureInputs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def micrometres_per_unit(self) -> float | None:
        """The factor from ``unit`` to µm, or None when the unit is unknown."""
        return UNIT_TO_MICROMETRE.get(str(self.unit).lower()) if self.unit else None


def _same_size(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(math.isclose(x, y, rel_tol=1e-5) for x, y in zip(a, b))


def check_inputs(
    instances: Any, image: Any = None, probabilities: Any = None, voxel_size: Any = None, unit: str | None = None
) -> MeasureInputs:
    """Check opened volumes against each other and choose the voxel size (see :func:`open_measure_inputs`)."""
    if len(instances.shape) != 3:
        raise DataError(f"{instances}: shape {list(instances.shape)}; expected a (Z, Y, X) volume of instance IDs.")
    if not np.issubdtype(instances.dtype, np.integer):
        raise DataError(
            f"{instances} holds {instances.dtype} values; expected integer instance IDs (0 = background): "
            "label a mask first with `python -m mito_monai instances`."
        )
    for what, vol in (("image", image), ("probabilities", probabilities)):
        if vol is not None and tuple(vol.shape) != tuple(instances.shape):
            raise DataError(f"{what} {vol} has shape {list(vol.shape)}, but the instances {instances} have "
                            f"{list(instances.shape)}; expected the same (Z, Y, X).")
    stored = [(str(v), v.voxel_size, getattr(v, "unit", None)) for v in (instances, image, probabilities)
              if v is not None and v.voxel_size is not None]
    for name, size, _ in stored[1:]:
        if not _same_size(size, stored[0][1]):
            raise DataError(f"{name} has voxel size {list(size)} but {stored[0][0]} has {list(stored[0][1])}; "
                            "expected the same (z, y, x) voxel size (or pass --voxel_size z,y,x to choose one).")
    explicit = parse_voxel_size(voxel_size)
    if explicit is not None:
        spacing, source = explicit, "--voxel_size"
    elif stored:
        spacing, source = tuple(stored[0][1]), stored[0][0]
    else:
        spacing, source = (1.0, 1.0, 1.0), "none (voxels)"
    if unit is None and explicit is None:
        unit = next((u for _, _, u in stored if u), None)
    if unit is not None and str(unit).lower() not in UNIT_TO_MICROMETRE:
        raise ValueError(f"--unit {unit!r} is not a known length unit; expected one of {sorted(UNIT_TO_MICROMETRE)}.")
    return MeasureInputs(instances, image, probabilities, spacing, unit, source)  # type: ignore[arg-type]


def open_measure_inputs(
    instances: str | os.PathLike | Any,
    image: str | os.PathLike | Any | None = None,
    probabilities: str | os.PathLike | Any | None = None,
    voxel_size: Any = None,
    unit: str | None = None,
    instances_key: str | None = None,
    image_key: str | None = None,
) -> MeasureInputs:
    """Open the volumes of a measurement lazily and check them (nothing is read but metadata).

    Each of ``instances``, ``image`` and ``probabilities`` is a path in any supported format (see
    :func:`mito_monai.io.open_volume`) or an already opened volume (:class:`ArrayVolume`).

    The voxel size is ``voxel_size`` when given, else the one the files store (OME-Zarr ``scale``, NIfTI
    zooms), else 1, 1, 1 (results in voxels). The unit is ``unit``, else the files' own (OME-Zarr axes).

    Raises:
        DataError: instances that are not integer IDs, a shape or stored voxel size that differs between
            the files (the message names both).
        ValueError: a malformed ``voxel_size`` or an unknown ``unit``.
    """
    opened = []
    try:
        for path, key in ((instances, instances_key), (image, image_key), (probabilities, None)):
            if path is None or hasattr(path, "read"):
                opened.append(path)
            else:
                opened.append(open_volume(path, key))
        return check_inputs(*opened, voxel_size=voxel_size, unit=unit)
    except Exception:
        for v in opened:
            if v is not None and not (v is instances or v is image or v is probabilities):
                v.close()
        raise
