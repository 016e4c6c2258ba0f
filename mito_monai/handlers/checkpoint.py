"""Atomic checkpoints: periodic training state for resuming, and the final model weights."""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from mito_monai.handlers.random_state import TrainingRandomState

__all__ = [
    "AtomicCheckpointSaver",
    "atomic_torch_save",
    "init_from_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "require_checkpoint",
    "resume_training",
    "run_state_objects",
]

#: checkpoint keys of the run state the handlers add themselves (see :func:`run_state_objects`)
RANDOM_STATE_KEY = "random_state"
LOSS_TERMS_KEY = "loss_terms"

_CKPT_RE = re.compile(r"^checkpoint_iteration=(\d+)\.pt$")


def _fsync_directory(directory: Path) -> None:
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
    _fsync_directory(path.parent)
    return path


def latest_checkpoint(directory: str | os.PathLike) -> str | None:
    """The path of the newest ``checkpoint_iteration=N.pt`` in ``directory`` (largest N), or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _CKPT_RE.match(p.name))]
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
    module = _unwrap(network)
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


def _unwrap(obj: Any) -> Any:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (so saved keys carry no
    ``module.`` prefix, as ``monai.handlers.CheckpointLoader`` expects); anything else unchanged."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    return obj.module if isinstance(obj, wrappers) else obj


def _backup_name(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d_%H%M%S", time.localtime(path.stat().st_mtime))
    candidate = path.with_name(f"{path.stem}_{stamp}{path.suffix}")
    i = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}_{stamp}_{i}{path.suffix}")
        i += 1
    return candidate


def run_state_objects(engine: Engine) -> dict[str, Any]:
    """The run state a checkpoint needs besides the configured objects for a resumed run to be exact.

    - ``random_state``: a :class:`~mito_monai.handlers.random_state.TrainingRandomState` over the engine's
      data loaders (``data_loader`` and, for the two-loader trainers, ``second_data_loader``): global
      torch/numpy/Python states, sampler and loader generators, every MONAI transform's ``R``;
    - ``loss_terms``: the engine's ``terms`` (an ``nn.ModuleDict`` of :class:`~mito_monai.engines.LossTerm`),
      whose state holds the loss modules' buffers (e.g. the prototype loss's moving averages) and each
      term's ramp-up length, when the engine has any.
    """
    objects: dict[str, Any] = {
        RANDOM_STATE_KEY: TrainingRandomState(
            [getattr(engine, "data_loader", None), getattr(engine, "second_data_loader", None)]
        )
    }
    terms = getattr(engine, "terms", None)
    if isinstance(terms, torch.nn.Module):
        objects[LOSS_TERMS_KEY] = terms
    return objects


class AtomicCheckpointSaver:
    """Save training state every ``save_interval`` epochs and the final weights, each atomically.

    - ``checkpoint_iteration=N.pt`` holds ``{name: obj.state_dict()}`` for ``save_dict`` (typically
      model, optimizer, lr scheduler, an EMA teacher: any object with ``state_dict``/``load_state_dict``),
      the trainer under ``engine_key`` (epoch, iteration) and, with ``run_state``, what
      :func:`run_state_objects` lists (random state, loss-module buffers, ramp-up lengths); the newest
      ``n_saved`` are kept. Resume with :func:`resume_training` and the same ``save_dict``.
    - ``final_filename`` (e.g. ``model.pt``) holds the final network's ``state_dict`` alone, as the
      MONAI model zoo expects. An existing file of that name is never overwritten silently: it is
      renamed to ``<stem>_<its mtime>.pt`` first and the rename is logged.

    Args:
        save_dir: folder of the periodic checkpoints.
        save_dict: name -> object with ``state_dict()`` to save periodically.
        save_interval: epochs between periodic checkpoints (0 = none).
        n_saved: how many periodic checkpoints to keep.
        final_model: the network whose weights go into ``final_path`` when training completes.
        final_path: where the final weights go (``None`` = not written).
        engine_key: name under which the engine this handler is attached to saves its own state
            (epoch, iteration) next to ``save_dict``; ``None`` leaves it out. (A bundle config cannot
            put the trainer into ``save_dict`` itself: the trainer already refers to its handlers.)
        run_state: also save :func:`run_state_objects` of the engine, so that a resumed run is exact.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        save_interval: int = 1,
        n_saved: int = 1,
        final_model: torch.nn.Module | None = None,
        final_path: str | os.PathLike | None = None,
        engine_key: str | None = "trainer",
        run_state: bool = True,
    ) -> None:
        if save_interval < 0:
            raise ValueError(f"save_interval must be >= 0, got {save_interval}.")
        if n_saved < 1:
            raise ValueError(f"n_saved must be >= 1, got {n_saved}.")
        if final_path is not None and final_model is None:
            raise ValueError("final_path needs final_model.")
        reserved = sorted({RANDOM_STATE_KEY, LOSS_TERMS_KEY} & set(save_dict)) if run_state else []
        if reserved:
            raise ValueError(f"save_dict keys {reserved} are reserved for the run state the saver adds itself.")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.save_interval = save_interval
        self.n_saved = n_saved
        self.final_model = final_model
        self.final_path = Path(final_path) if final_path is not None else None
        self.engine_key = engine_key
        self.run_state = bool(run_state)
        self._saved_random_state: dict[str, Any] | None = None
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        if self.engine_key is not None:
            self.save_dict.setdefault(self.engine_key, engine)
        if self.save_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save_state)
            if self.run_state:
                engine.add_event_handler(Events.EPOCH_STARTED, self._continue_from_saved_random_state)
        if self.final_path is not None:
            engine.add_event_handler(Events.COMPLETED, self.save_final)

    def _continue_from_saved_random_state(self, engine: Engine) -> None:
        """At the start of the epoch after a save, go back to the saved random state, as a resumed run does:
        whatever drew random numbers after the save (handlers that ran later at the end of that epoch, e.g.
        a model selection iterating its own loader) is undone in the uninterrupted run too."""
        if self._saved_random_state is not None:
            run_state_objects(engine)[RANDOM_STATE_KEY].load_state_dict(self._saved_random_state)
            self._saved_random_state = None

    def save_state(self, engine: Engine) -> Path:
        objects = {**self.save_dict, **(run_state_objects(engine) if self.run_state else {})}
        state = {name: _unwrap(obj).state_dict() for name, obj in objects.items()}
        if self.run_state:
            self._saved_random_state = state[RANDOM_STATE_KEY]
        path = atomic_torch_save(state, self.save_dir / f"checkpoint_iteration={engine.state.iteration}.pt")
        found = sorted(
            (int(m.group(1)), p) for p in self.save_dir.iterdir() if (m := _CKPT_RE.match(p.name))
        )
        for _, old in found[: -self.n_saved]:
            old.unlink(missing_ok=True)
        self.logger.info(f"saved training state to {path}")
        return path

    def save_final(self, engine: Engine) -> Path:
        assert self.final_path is not None and self.final_model is not None
        if self.final_path.exists():
            backup = _backup_name(self.final_path)
            os.replace(self.final_path, backup)
            self.logger.warning(f"kept the previous {self.final_path.name} as {backup}")
        path = atomic_torch_save(_unwrap(self.final_model).state_dict(), self.final_path)
        self.logger.info(f"saved final model weights to {path}")
        return path


def resume_training(
    trainer: Engine,
    ckpt_dir: str | os.PathLike,
    load_dict: Mapping[str, Any],
    map_location: Any = None,
    engine_key: str | None = "trainer",
) -> str:
    """Resume ``trainer`` from the newest checkpoint in ``ckpt_dir`` when it starts (``Events.STARTED``).

    Restores the objects of ``load_dict`` (pass the same objects as the saver's ``save_dict``: model,
    optimizer, lr scheduler, EMA teacher, ...), the trainer's epoch and iteration (under ``engine_key``;
    the configured ``max_epochs`` is kept, so a run can be extended) and the run state of
    :func:`run_state_objects`: random state, loss-module buffers and ramp-up lengths. Resuming at the
    epoch boundary where the checkpoint was written, the rest of the run is then the uninterrupted run's.
    A checkpoint without that run state (written before it existed) still resumes, with a warning that the
    run is not exact.

    Raises:
        FileNotFoundError: naming ``ckpt_dir`` when there is nothing to resume from.
        ValueError (when the trainer starts): the checkpoint holds an object that ``load_dict`` lacks (it would
            be silently reset) or lacks one of ``load_dict``.

    Returns:
        the checkpoint path that will be loaded.
    """
    path = latest_checkpoint(ckpt_dir)
    if path is None:
        raise FileNotFoundError(
            f"nothing to resume: no checkpoint_iteration=N.pt in {ckpt_dir} (train once without --resume first)."
        )
    load_checkpoint(path)  # an unreadable file fails here, naming it, not inside the trainer's run
    objects = dict(load_dict)
    if engine_key is not None:
        objects.setdefault(engine_key, trainer)
    run_state = run_state_objects(trainer)
    logger = logging.getLogger(__name__)

    def _load(engine: Engine) -> None:
        checkpoint = load_checkpoint(path, map_location=map_location if map_location is not None else "cpu")
        unknown = sorted(set(checkpoint) - set(objects) - set(run_state))
        if unknown:
            raise ValueError(
                f"{path} holds {unknown}, which this run has nothing to load into: pass them to resume_training "
                "too (in a bundle: add them to the objects the checkpoint saver and the resume share)."
            )
        missing = sorted(set(objects) - set(checkpoint))
        if missing:
            raise ValueError(f"{path} lacks {missing} (it holds {sorted(checkpoint)}).")
        absent = sorted(set(run_state) - set(checkpoint))
        if absent:
            logger.warning(f"{path} predates the run state {absent}: the resumed run will not be exact.")
        prior_max_epochs = engine.state.max_epochs
        for name, obj in objects.items():
            _unwrap(obj).load_state_dict(checkpoint[name])
        for name, obj in run_state.items():
            if name in checkpoint:
                obj.load_state_dict(checkpoint[name])
        if prior_max_epochs is not None and engine.state.epoch > prior_max_epochs:
            raise ValueError(
                f"{path} is at epoch {engine.state.epoch}, beyond this run's max_epochs {prior_max_epochs}: "
                "ask for more iterations to continue it."
            )
        engine.state.max_epochs = prior_max_epochs
        logger.info(f"restored {sorted(objects) + sorted(set(run_state) & set(checkpoint))} from {path}")

    trainer.add_event_handler(Events.STARTED, _load)
    logger.info(f"resuming from {path}")
    return path
