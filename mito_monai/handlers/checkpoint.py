"""Checkpoint handlers: periodic training state for resuming (atomic saves), and resuming a run from it."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from mito_monai.handlers.random_state import TrainingRandomState
from mito_monai.runtime.checkpoint_files import (
    CHECKPOINT_FILE_PATTERN,
    atomic_torch_save,
    latest_checkpoint,
    load_checkpoint,
    unwrap_module,
)

__all__ = ["AtomicCheckpointSaver", "resume_training", "run_state_objects"]

#: checkpoint keys of the run state the handlers add themselves (see :func:`run_state_objects`)
RANDOM_STATE_KEY = "random_state"
LOSS_TERMS_KEY = "loss_terms"


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
        state = {name: unwrap_module(obj).state_dict() for name, obj in objects.items()}
        if self.run_state:
            self._saved_random_state = state[RANDOM_STATE_KEY]
        path = atomic_torch_save(state, self.save_dir / f"checkpoint_iteration={engine.state.iteration}.pt")
        found = sorted(
            (int(m.group(1)), p) for p in self.save_dir.iterdir() if (m := CHECKPOINT_FILE_PATTERN.match(p.name))
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
        path = atomic_torch_save(unwrap_module(self.final_model).state_dict(), self.final_path)
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
            unwrap_module(obj).load_state_dict(checkpoint[name])
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
