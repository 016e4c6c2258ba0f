"""Measure every instance of a volume of any size: the table, its summary, and the largest objects' crops.

Two passes, each run by an executor of :mod:`mito_monai.inference.executors` (in this process, or on Dask
with ``scheduler="dask"``):

1. block statistics (:class:`~mito_monai.morphology.block_stats.StatisticsTask`) over a
   :class:`~mito_monai.inference.block_plan.BlockPlan`, added up (counts, sums, boxes, contacts);
2. per-object geometry (:class:`~mito_monai.morphology.geometry.GeometryTask`) on each object's own box.

Memory: one block of every measured volume in pass 1; in pass 2 the union of the boxes of the objects that
start in one block (at most 1.5 blocks per axis), or the box of the largest object, with a few float copies
of it; plus the table (a few hundred bytes per object). The result does not depend on the block grid.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mito_monai.inference.block_plan import BlockPlan
from mito_monai.inference.executors import make_executor
from mito_monai.morphology.block_stats import StatisticsTask, merge_block_statistics
from mito_monai.morphology.geometry import GeometryTask, plan_geometry
from mito_monai.morphology.inputs import MeasureInputs, open_measure_inputs
from mito_monai.morphology.previews import largest_object_slices, save_object_slices
from mito_monai.morphology.summary import summarize, write_summary
from mito_monai.morphology.table import build_table, check_table_path, write_table

__all__ = ["SCHEDULERS", "default_objects_path", "measure_arrays", "measure_inputs", "measure_instances", "summary_path_for"]

#: the values of ``scheduler``
SCHEDULERS = ("local", "dask")


def _source(volume: Any, key: str | None, scheduler: str):
    """What a task gets: the opened volume in this process; ``(path, key)`` for Dask workers to open."""
    if volume is None or scheduler == "local" or not hasattr(volume, "path"):
        return volume
    return (str(volume), None)


def measure_inputs(
    inputs: MeasureInputs,
    block_shape: Sequence[int] = (64, 512, 512),
    skeleton: bool = False,
    connectivity: int = 6,
    scheduler: str = "local",
    dask_workers: int = 2,
    dask_address: str | None = None,
    progress: bool = False,
    dask_processes: bool = True,
):
    """Measure opened, checked inputs (see :func:`~mito_monai.morphology.inputs.open_measure_inputs`).

    Args:
        block_shape, skeleton, connectivity, scheduler, dask_workers, dask_address: see :func:`measure_instances`.
        progress: show progress bars over the blocks and the objects.
        dask_processes: local Dask workers are processes (True) or threads of this process.

    Returns:
        ``(table, summary)``: the ``pandas.DataFrame`` (see :mod:`mito_monai.morphology.table`) and the
        summary dict (see :func:`~mito_monai.morphology.summary.summarize`).
    """
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}.")
    if connectivity not in (6, 26):
        raise ValueError(f"connectivity must be 6 or 26 (which voxels touch), got {connectivity}.")
    shape = tuple(inputs.instances.shape)
    plan = BlockPlan(shape, block_shape)
    sources = [_source(v, None, scheduler) for v in (inputs.instances, inputs.image, inputs.probabilities)]
    with make_executor(scheduler, dask_workers, dask_address, dask_processes) as executor:
        task = StatisticsTask(*sources, plan, connectivity)
        parts = list(executor.map(task, range(len(plan)), "measuring: statistics", progress=progress,
                                  voxels=[b.voxels for b in plan]))
        stats = merge_block_statistics(parts)
        del parts
        groups = plan_geometry(stats.ids, stats.box_min, stats.box_max, plan)
        geometry: dict[int, dict] = {}
        for rows in executor.map(GeometryTask(sources[0], inputs.spacing, skeleton), groups, "measuring: shapes",
                                 progress=progress):
            geometry.update(rows)
    table = build_table(stats, geometry, shape, inputs.spacing, skeleton)
    summary = summarize(table, shape, inputs.spacing, inputs.unit, inputs.micrometres_per_unit)
    summary["voxel_size_from"] = inputs.spacing_source
    summary["contact_connectivity"] = connectivity
    return table, summary


def measure_arrays(
    labels: Any,
    image: Any = None,
    probabilities: Any = None,
    voxel_size: Sequence[float] | None = None,
    unit: str | None = None,
    skeleton: bool = False,
    connectivity: int = 6,
    name: str = "labels",
):
    """Measure in-memory arrays (e.g. napari layers): ``(table, summary)`` as :func:`measure_inputs`.

    ``labels`` is a 2D or (Z, Y, X) integer array; ``image`` and ``probabilities`` the same shape or None;
    ``voxel_size`` (z, y, x) (for a 2D array the last two entries count); ``name`` names ``labels`` in messages.
    """
    from mito_monai.morphology.inputs import ArrayVolume, check_inputs

    if voxel_size is not None and len(voxel_size) == 2:
        voxel_size = (1.0, *voxel_size)
    volumes = [None if a is None else ArrayVolume(a, name=f"{name} ({what})" if what else name)
               for a, what in ((labels, ""), (image, "image"), (probabilities, "probabilities"))]
    inputs = check_inputs(*volumes, voxel_size=voxel_size, unit=unit)
    return measure_inputs(inputs, block_shape=inputs.instances.shape, skeleton=skeleton, connectivity=connectivity)


def summary_path_for(output: str | os.PathLike) -> Path:
    """``table.csv`` -> ``table_summary.json`` (beside it)."""
    output = Path(output)
    return output.with_name(f"{output.stem}_summary.json")


def measure_instances(
    instances: str | os.PathLike,
    output: str | os.PathLike,
    image: str | os.PathLike | None = None,
    probabilities: str | os.PathLike | None = None,
    voxel_size: Any = None,
    unit: str | None = None,
    instances_key: str | None = None,
    image_key: str | None = None,
    skeleton: bool = False,
    connectivity: int = 6,
    block_shape: Sequence[int] = (64, 512, 512),
    scheduler: str = "local",
    dask_workers: int = 2,
    dask_address: str | None = None,
    objects: int = 6,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure the instances at ``instances`` and write the table, its summary and the largest objects' crops.

    Args:
        instances, instances_key: the instance-ID volume (any supported format; integer, 0 = background).
        output: the table, ``.csv`` or ``.parquet``; the summary goes to ``<stem>_summary.json`` and the crops
            of the ``objects`` largest objects to ``<stem>_objects.npz`` beside it.
        image, image_key: the raw image (mean intensity per object), optional.
        probabilities: foreground probabilities (mean probability per object), optional.
        voxel_size: (z, y, x) or ``"z,y,x"``; default the files' own (OME-Zarr, NIfTI), else voxels.
        unit: the unit of the voxel size (e.g. ``nanometer``); default the files' own. Needed for the density.
        skeleton: add the skeleton columns (branches, length).
        connectivity: 6 (faces) or 26 (faces, edges, corners): which voxels of two instances touch.
        block_shape: (z, y, x) blocks of the statistics pass; the result does not depend on it.
        scheduler, dask_workers, dask_address: ``local`` or ``dask`` (see
            :func:`mito_monai.inference.executors.make_executor`).
        objects: how many of the largest objects get a middle-slice crop (0: none).
        overwrite: replace existing outputs; without it an existing table or summary is an error.

    Returns:
        ``{"table": path, "summary": path, "objects": path or None, **summary}``.
    """
    output = check_table_path(output, overwrite)
    summary_path = summary_path_for(output)
    objects_path = default_objects_path(output) if objects else None
    for path in (summary_path, objects_path):
        if path is not None and path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite true to replace it, or choose another --output.")
    with open_measure_inputs(instances, image, probabilities, voxel_size, unit, instances_key, image_key) as inputs:
        table, summary = measure_inputs(inputs, block_shape, skeleton, connectivity, scheduler, dask_workers,
                                        dask_address, progress)
        crops = largest_object_slices(table, inputs.instances, inputs.image, objects) if objects and len(table) else []
    summary = {"instances": str(instances), **summary}
    write_table(table, output, overwrite=True)
    write_summary(summary, summary_path)
    if objects_path is not None:
        save_object_slices(crops, objects_path)
    return {"table": str(output), "summary": str(summary_path),
            "objects": None if objects_path is None else str(objects_path), **summary}


def default_objects_path(table_path: str | os.PathLike) -> Path:
    """Where :func:`measure_instances` put the crops of a table (``<stem>_objects.npz``)."""
    table_path = Path(table_path)
    return table_path.with_name(f"{table_path.stem}_objects.npz")

