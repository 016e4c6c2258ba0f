"""MONAI dictionary transforms for 2D EM slices that MONAI lacks, and the pipelines the bundles use.

Samples are dicts ``{"image": (1, H, W) float32, "label": (1, H, W)}``; everything geometric comes from MONAI.
"""

from mito_monai.transforms.histogram import (
    MatchHistogram,
    MatchHistogramd,
    intensity_quantiles,
    load_reference_quantiles,
    save_histogram_reference,
    source_intensity_quantiles,
    target_histogram_reference,
)
from mito_monai.transforms.intensity import (
    NormalizePerSlice,
    NormalizePerSliced,
    RandBrightnessContrast,
    RandBrightnessContrastd,
    RandCoarseDropoutMean,
    RandCoarseDropoutMeand,
)
from mito_monai.transforms.resolution import RescaleToPixelSize, RescaleToPixelSized, resize_slices, scaled_size
from mito_monai.transforms.presets import eval_transforms, train_transforms
from mito_monai.transforms.views import WeakStrongViewsd, strong_photometric_transform

__all__ = [
    "MatchHistogram",
    "MatchHistogramd",
    "NormalizePerSlice",
    "NormalizePerSliced",
    "RandBrightnessContrast",
    "RandBrightnessContrastd",
    "RandCoarseDropoutMean",
    "RandCoarseDropoutMeand",
    "RescaleToPixelSize",
    "RescaleToPixelSized",
    "WeakStrongViewsd",
    "eval_transforms",
    "resize_slices",
    "scaled_size",
    "intensity_quantiles",
    "load_reference_quantiles",
    "save_histogram_reference",
    "source_intensity_quantiles",
    "target_histogram_reference",
    "strong_photometric_transform",
    "train_transforms",
]
