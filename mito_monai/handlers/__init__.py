"""Ignite event handlers: atomic checkpoints, the final evaluation report, MLflow extras, the run history and
report, label-free selection; one-line user errors."""

from mito_monai.handlers.checkpoint import (
    AtomicCheckpointSaver,
    atomic_torch_save,
    init_from_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    require_checkpoint,
    resume_training,
)
from mito_monai.handlers.history import TrainingHistory, output_scalars
from mito_monai.handlers.mlflow_extras import MLflowRunExtras, flatten_params
from mito_monai.handlers.selection import LabelFreeSelection
from mito_monai.handlers.report import (
    EvaluationReport,
    FinalEvaluation,
    format_metrics_table,
    report_metrics,
    require_file,
    scalar_metrics,
)
from mito_monai.handlers.user_errors import report_user_errors, user_error_message
from mito_monai.handlers.run_report import RunReport

__all__ = [
    "AtomicCheckpointSaver",
    "EvaluationReport",
    "FinalEvaluation",
    "LabelFreeSelection",
    "MLflowRunExtras",
    "RunReport",
    "TrainingHistory",
    "flatten_params",
    "atomic_torch_save",
    "format_metrics_table",
    "init_from_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "output_scalars",
    "report_metrics",
    "report_user_errors",
    "require_checkpoint",
    "require_file",
    "resume_training",
    "scalar_metrics",
    "user_error_message",
]
