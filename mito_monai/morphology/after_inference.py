"""Measure a bundle's segmentation right after inference (``--measure true``): instances, then the table.

The bundles' inference config passes what :meth:`~mito_monai.inference.StackSegmenter.run` returned to
:func:`measure_segmentation`, which labels the 3D instances of the mask (block-wise,
:func:`~mito_monai.inference.instances.label_instances`, into ``instances.zarr``) and measures them with the
input image and the probabilities into ``measurements.csv`` beside the other outputs (with
``measurements_summary.json`` and ``measurements_objects.npz``, which the run report draws).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["INSTANCES_FILE", "measure_segmentation"]

#: the instance IDs written beside the outputs
INSTANCES_FILE = "instances.zarr"


def measure_segmentation(
    outputs: Mapping[str, str],
    image: str | os.PathLike | None = None,
    image_key: str | None = None,
    measure: bool = True,
    overwrite: bool = False,
    block_slices: int = 64,
    block_tile: int = 512,
    scheduler: str = "local",
    dask_workers: int = 2,
    dask_address: str | None = None,
    **measure_options: Any,
) -> dict[str, Any]:
    """Label and measure the mask of a segmentation; ``outputs`` unchanged when ``measure`` is False.

    Args:
        outputs: name -> path as returned by ``StackSegmenter.run`` (``masks`` and ``summary`` are needed).
        image, image_key: the segmented input, for the mean intensity (None: no intensity column).
        measure: do it (the config's ``measure`` switch).
        overwrite: replace existing instances and measurements.
        block_slices, block_tile, scheduler, dask_workers, dask_address: the blocks and executor of both passes.
        measure_options: further options of :func:`~mito_monai.morphology.measure_instances` (e.g. ``skeleton``).

    Returns:
        ``outputs`` with ``instances``, ``measurements``, ``measurements_summary`` and ``measurements_objects``.
    """
    if not measure:
        return dict(outputs)
    if "masks" not in outputs:
        raise ValueError("--measure true needs the masks among the outputs (save_masks=True).")
    from mito_monai.inference.instances import label_instances
    from mito_monai.morphology.measure import measure_instances

    folder = Path(outputs.get("summary", outputs["masks"])).parent
    instances = folder / INSTANCES_FILE
    table = folder / "measurements.csv"
    if table.exists() and not overwrite:
        raise FileExistsError(f"{table} exists; pass --overwrite true to replace it.")
    label_instances(outputs["masks"], instances, block_shape=(block_slices, block_tile, block_tile), overwrite=overwrite)
    result = measure_instances(
        instances, table, image=image, image_key=image_key, probabilities=outputs.get("probabilities"),
        block_shape=(block_slices, block_tile, block_tile), scheduler=scheduler, dask_workers=dask_workers,
        dask_address=dask_address, overwrite=overwrite, progress=False, **measure_options,
    )
    return {**outputs, "instances": str(instances), "measurements": result["table"],
            "measurements_summary": result["summary"], "measurements_objects": result["objects"]}
