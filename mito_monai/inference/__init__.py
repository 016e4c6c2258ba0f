"""Whole-volume inference: any number of slices of any size, block by block, streamed to disk."""

from mito_monai.inference.sources import SliceSource
from mito_monai.inference.stack_segmenter import OUTPUT_SUFFIXES, StackSegmenter, normalize_slice

__all__ = ["OUTPUT_SUFFIXES", "SliceSource", "StackSegmenter", "normalize_slice"]
