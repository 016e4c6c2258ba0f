"""The field's metrics (docs/design.md section 5) as functions and as an ignite/MONAI metric.

UDA convention (per slice, averaged): mAP, F1, MCC, IoU. SSL convention (whole volume): Dice, Jaccard.
Calibration: ECE. See :mod:`mito_monai.metrics.segmentation` for the exact definitions and degenerate cases.
Without labels: the label-free scores (entropy, foreground fraction, agreement; :mod:`mito_monai.metrics.label_free`,
and as an ignite metric :class:`LabelFreeMetrics`), and the distance of the predicted objects' shapes to the
source labels' (:mod:`mito_monai.metrics.shape_prior`).
"""

from mito_monai.metrics.ignite_metrics import SegmentationMetrics, default_output_transform, from_logits_output
from mito_monai.metrics.instances import instance_average_precision, instance_metrics, instance_overlaps
from mito_monai.metrics.label_free import LABEL_FREE_CRITERIA, LabelFreeScores, binary_entropy, mask_agreement
from mito_monai.metrics.label_free_metrics import (
    LABEL_FREE_KEYS,
    LabelFreeMetrics,
    evaluation_key_metric,
    probability_output,
)
from mito_monai.metrics.shape_prior import object_shapes, shape_distance
from mito_monai.metrics.segmentation import (
    CalibrationBins,
    average_precision,
    calibration_bins,
    expected_calibration_error,
    expected_calibration_error_from_bins,
    segmentation_metrics,
    ssl_metrics,
)

__all__ = [
    "LABEL_FREE_CRITERIA",
    "LABEL_FREE_KEYS",
    "LabelFreeMetrics",
    "LabelFreeScores",
    "evaluation_key_metric",
    "probability_output",
    "binary_entropy",
    "mask_agreement",
    "CalibrationBins",
    "SegmentationMetrics",
    "average_precision",
    "calibration_bins",
    "default_output_transform",
    "expected_calibration_error",
    "expected_calibration_error_from_bins",
    "from_logits_output",
    "instance_average_precision",
    "instance_metrics",
    "instance_overlaps",
    "segmentation_metrics",
    "ssl_metrics",
    "object_shapes",
    "shape_distance",
]
