"""What both training and inference run on: checkpoint files, distributed helpers, one-line user errors, and the
machine-dependent choices (the device and the numeric precision).

Nothing here imports an engine, a handler or an inference module, so inference and export can load weights
without importing training.
"""

from mito_monai.runtime.checkpoint_files import (
    atomic_torch_save,
    init_from_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    require_checkpoint,
    unwrap_module,
)
from mito_monai.runtime.distributed import (
    distributed_device,
    handlers_for_this_process,
    init_distributed,
    is_main_process,
)
from mito_monai.runtime.precision import AUTO, Precision, as_precision, cpu_native_bf16, default_device, resolve_precision
from mito_monai.runtime.user_errors import report_user_errors, user_error_message

__all__ = [
    "AUTO",
    "Precision",
    "as_precision",
    "atomic_torch_save",
    "cpu_native_bf16",
    "default_device",
    "distributed_device",
    "handlers_for_this_process",
    "init_distributed",
    "init_from_checkpoint",
    "is_main_process",
    "latest_checkpoint",
    "load_checkpoint",
    "report_user_errors",
    "require_checkpoint",
    "resolve_precision",
    "unwrap_module",
    "user_error_message",
]
