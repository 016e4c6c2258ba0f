"""Process-group set-up for data-parallel training launched with ``torchrun`` (the bundles' ``multi_gpu_train.json``)."""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import Any

import ignite.distributed as idist
import torch
import torch.distributed as dist

__all__ = ["distributed_device", "handlers_for_this_process", "init_distributed", "is_main_process"]

_LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def distributed_device() -> torch.device:
    """This process's device: ``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU (gloo runs)."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed(timeout_minutes: float = 120.0, backend: str | None = None) -> torch.device:
    """Join the process group ``torchrun`` describes in the environment and return this process's device.

    The backend is NCCL when CUDA is available and gloo otherwise (so the same config runs as several
    CPU processes, which is how it is tested). ``timeout_minutes`` bounds every collective: the ranks
    wait for each other at the metric all-reduce of an evaluation (their shares of the stack differ by
    up to one slice) and at the first gradient all-reduce after it while rank 0 writes checkpoints and
    reports, so it must exceed those waits on the largest stacks (PyTorch's NCCL default is 10 minutes).
    Calling it again in an initialised process only returns the device.

    Raises:
        RuntimeError: when the process was not launched by ``torchrun`` (launch variables missing).
        ValueError: when ``timeout_minutes`` is not positive, or a CUDA process has more local ranks
            than visible GPUs.
    """
    if timeout_minutes <= 0:
        raise ValueError(f"timeout_minutes must be positive, got {timeout_minutes}.")
    if dist.is_initialized():
        return distributed_device()
    missing = [v for v in _LAUNCH_VARIABLES if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"multi-process training needs the launch variables {', '.join(missing)}: start it with "
            "`torchrun --nproc_per_node=N -m monai.bundle run training --config_file \"['.../train.json', "
            "'.../multi_gpu_train.json']\"`, or train on one device with train.json alone."
        )
    device = distributed_device()
    if device.type == "cuda":
        if device.index >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {device.index} has no GPU: {torch.cuda.device_count()} visible; "
                "start at most that many processes per node (--nproc_per_node)."
            )
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=backend or ("nccl" if device.type == "cuda" else "gloo"),
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )
    return device


def is_main_process() -> bool:
    """True on rank 0 of an initialised process group and in any single-process run."""
    return idist.get_rank() == 0


def handlers_for_this_process(handlers: Sequence[Any], every_process: tuple[type, ...] = ()) -> list[Any]:
    """Every handler on the main process; elsewhere only instances of ``every_process``.

    The handlers that must run on every rank are those that take part in collectives, such as
    validation, whose metrics are all-reduced over the ranks' shares of the evaluation stack; those
    that write files, print or log (checkpoints, MLflow, progress) stay on rank 0.
    """
    if is_main_process():
        return list(handlers)
    return [h for h in handlers if isinstance(h, every_process)]
