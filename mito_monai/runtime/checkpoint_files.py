"""Checkpoint files: atomic saves, the newest training checkpoint of a folder, loading weights safely
(``weights_only=True``, errors that name the file) and warm starts. No engine or handler is needed to use them, so
inference and export load weights from here."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINT_FILE_PATTERN",
    "atomic_torch_save",
    "fsync_directory",
    "init_from_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "require_checkpoint",
    "unwrap_module",
]

#: ``checkpoint_iteration=N.pt``, the name of a periodic training checkpoint (N: the iteration).
CHECKPOINT_FILE_PATTERN = re.compile(r"^checkpoint_iteration=(\d+)\.pt$")


def fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, ``os.replace``, then fsync the directory.

    A reader never sees a partial file; a save that fails (at any step) leaves the previous ``path``
    untouched and no temporary file behind; after a successful return the new file survives a crash.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path


def latest_checkpoint(directory: str | os.PathLike) -> str | None:
    """The path of the newest ``checkpoint_iteration=N.pt`` in ``directory`` (largest N), or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_FILE_PATTERN.match(p.name))]
    return str(max(found)[1]) if found else None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True`` and an error that names the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        first = str(e).splitlines()[0].split(". ")[0] if str(e) else ""
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {first}); expected weights saved "
            "with torch.save, loadable with weights_only=True."
        ) from e


def require_checkpoint(path: str | os.PathLike, what: str) -> str:
    """
    Fail early, before any data is read, when ``path`` is not a readable checkpoint; return it as a string.

    Raises:
        FileNotFoundError: naming ``path`` and ``what`` it should be, when there is no such file.
        ValueError: naming ``path``, when it is not a PyTorch checkpoint loadable with ``weights_only=True``.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist: expected {what}.")
    load_checkpoint(path)
    return str(path)


def init_from_checkpoint(
    network: torch.nn.Module, path: str | os.PathLike | None, key: str = "model", required: str | None = None
) -> torch.nn.Module:
    """Initialise ``network`` from a saved model before training (a warm start), in place.

    ``path`` is a ``model.pt`` state dict (what training writes at the end) or a training checkpoint
    ``checkpoint_iteration=N.pt`` whose ``key`` entry is the model's state dict. It is loaded with
    ``weights_only=True`` and must fit the network exactly (same keys, same shapes); otherwise a
    ``ValueError`` names the file and the first mismatches. Only the weights are taken: optimiser,
    iteration counter and schedules start afresh. ``None`` or ``""`` leaves the network as it is, unless
    ``required`` is given: then it is a ``ValueError`` with that message (a run that cannot start from
    random weights, such as source-free adaptation).

    Returns:
        ``network`` (so a config can write ``$init_from_checkpoint(@network, @init_checkpoint)``).
    """
    if path is None or str(path) in ("", "None", "none"):
        if required:
            raise ValueError(f"no warm start given: {required}.")
        return network
    if required and not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist: {required}.")
    state = load_checkpoint(path, map_location="cpu")
    if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
        state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no model state dict (expected model.pt or a checkpoint with '{key}').")
    module = unwrap_module(network)
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the network"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {wrong[:2]})")
        raise ValueError(
            f"{path} does not fit the network {type(module).__name__}: {'; '.join(parts)}. "
            "Was it trained with other channels / another network?"
        )
    module.load_state_dict(state)
    logging.getLogger(__name__).info(f"initialised {type(module).__name__} from {path}")
    return network


def unwrap_module(obj: Any) -> Any:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (so saved keys carry no
    ``module.`` prefix, as ``monai.handlers.CheckpointLoader`` expects); anything else unchanged."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    return obj.module if isinstance(obj, wrappers) else obj

