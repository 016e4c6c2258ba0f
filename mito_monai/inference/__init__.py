"""Whole-volume inference: any number of slices of any size, block by block, streamed to disk."""

from mito_monai.inference.autocast import AutocastInferer
from mito_monai.inference.block_predictor import BlockPredictor, normalize_slice
from mito_monai.inference.block_plan import Block, BlockPlan, window_starts
from mito_monai.inference.rescaling import RescalingInferer, probabilities_to_logits
from mito_monai.inference.executors import DaskExecutor, InProcessExecutor, make_executor
from mito_monai.inference.stack_segmenter import OUTPUT_SUFFIXES, StackSegmenter
from mito_monai.inference.tasks import BlockSegmentation, BlocksDone, SliceStats

__all__ = [
    "AutocastInferer",
    "RescalingInferer",
    "probabilities_to_logits",
    "OUTPUT_SUFFIXES",
    "BlockPredictor",
    "StackSegmenter",
    "normalize_slice",
    "Block",
    "BlockPlan",
    "window_starts",
    "InProcessExecutor",
    "DaskExecutor",
    "make_executor",
    "BlockSegmentation",
    "BlocksDone",
    "SliceStats",
]
