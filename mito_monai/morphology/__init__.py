"""Morphology of the segmented mitochondria: a per-instance table (volume, surface, shape, contacts) and its
summary, block by block for volumes of any size (``python -m mito_monai measure``).

A layer above :mod:`mito_monai.io` and :mod:`mito_monai.inference` (it reads volumes with ``open_volume`` and
runs its passes with the inference block plan and executors); the CLI, the bundles, the report and the napari
plugin use it.
"""

from mito_monai.morphology.after_inference import INSTANCES_FILE, measure_segmentation
from mito_monai.morphology.block_stats import (
    BlockStatistics,
    ObjectStatistics,
    StatisticsTask,
    block_statistics,
    contact_pairs,
    merge_block_statistics,
)
from mito_monai.morphology.geometry import (
    SURFACE_SIGMA,
    GeometryTask,
    object_geometry,
    skeleton_statistics,
    surface_area,
)
from mito_monai.morphology.inputs import ArrayVolume, MeasureInputs, open_measure_inputs, parse_voxel_size
from mito_monai.morphology.measure import (
    SCHEDULERS,
    default_objects_path,
    measure_arrays,
    measure_inputs,
    measure_instances,
    summary_path_for,
)
from mito_monai.morphology.previews import largest_object_slices, load_object_slices, save_object_slices
from mito_monai.morphology.summary import format_summary, summarize, write_summary
from mito_monai.morphology.table import COLUMNS, build_table, read_table, write_table

__all__ = [
    "ArrayVolume",
    "BlockStatistics",
    "COLUMNS",
    "GeometryTask",
    "INSTANCES_FILE",
    "MeasureInputs",
    "ObjectStatistics",
    "SCHEDULERS",
    "SURFACE_SIGMA",
    "StatisticsTask",
    "block_statistics",
    "build_table",
    "contact_pairs",
    "default_objects_path",
    "format_summary",
    "largest_object_slices",
    "load_object_slices",
    "measure_arrays",
    "measure_inputs",
    "measure_instances",
    "measure_segmentation",
    "merge_block_statistics",
    "object_geometry",
    "open_measure_inputs",
    "parse_voxel_size",
    "read_table",
    "save_object_slices",
    "skeleton_statistics",
    "summarize",
    "summary_path_for",
    "surface_area",
    "write_summary",
    "write_table",
]
