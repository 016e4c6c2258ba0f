"""What the two-loader trainers share: a cycled second loader, autocast and the optimiser step."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import nullcontext
from typing import Any

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from torch import nn

from mito_monai.engines.loss_term import LossTerm, check_term_inputs
from mito_monai.runtime.precision import AUTO, Precision, as_precision

__all__ = ["TwoLoaderTrainer", "cycle"]


def cycle(loader: Iterable) -> Iterator:
    """Yield batches of ``loader`` forever, re-iterating it (and so reshuffling) at each pass.

    Unlike ``itertools.cycle`` nothing is cached: every pass draws fresh random crops.
    """
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the second data loader yields no batch; check its dataset.")


class TwoLoaderTrainer(SupervisedTrainer):
    """A MONAI ``SupervisedTrainer`` whose epoch is driven by ``train_data_loader`` while a second
    loader (the unlabelled target or the unlabelled slices) is cycled alongside it.

    The second loader starts a fresh pass at every epoch (a pass longer than an epoch is cut there), so that
    a run resumed from an epoch-boundary checkpoint draws the same batches as the uninterrupted run.

    Subclasses call :meth:`_set_terms` in their constructor, override ``_iteration`` and use
    :meth:`_next_second_batch`, :meth:`_autocast`, :meth:`_add_terms` and :meth:`_backward_and_step`.

    Args:
        second_data_loader: the cycled loader (may be None when no active term needs it).
        amp: ``"auto"`` (bfloat16 autocast where the hardware computes it natively, float32 elsewhere on CPU,
            float16 with a gradient scaler on CUDA without bfloat16; see :mod:`mito_monai.runtime.precision`),
            true/false to force autocast, or a resolved :class:`~mito_monai.runtime.Precision`.
        amp_dtype: autocast dtype when autocast is on (``"auto"``, ``"bfloat16"``, ``"float16"``; float16 uses a
            gradient scaler on CUDA).
        all other arguments: as for ``monai.engines.SupervisedTrainer``.
    """

    def __init__(
        self,
        *args: Any,
        second_data_loader: Iterable | None = None,
        amp: Precision | bool | str = AUTO,
        amp_dtype: torch.dtype | str = AUTO,
        **kwargs: Any,
    ) -> None:
        device = kwargs.get("device", args[0] if args else None)
        self.precision = as_precision(amp, amp_dtype, device=device)
        super().__init__(*args, amp=self.precision.amp, **kwargs)
        self.amp_dtype = self.precision.dtype
        self._second_loader = second_data_loader
        self._second_iter: Iterator | None = None
        # every epoch starts a fresh pass of the second loader, as a resumed run does (exact resume)
        self.add_event_handler(Events.EPOCH_STARTED, self._restart_second_loader)

    @property
    def second_data_loader(self) -> Iterable | None:
        """The cycled second loader."""
        return self._second_loader

    def _restart_second_loader(self, _engine: Any = None) -> None:
        self._second_iter = None

    def _set_terms(self, terms: Mapping[str, LossTerm] | None, available: dict[str, str]) -> None:
        """Check ``terms`` against the quantities this trainer computes; keep them and the active ones."""
        terms = dict(terms or {})
        for name, term in terms.items():
            if not isinstance(term, LossTerm):
                raise TypeError(f"term {name!r} must be a mito_monai.engines.LossTerm, got {type(term).__name__}.")
        check_term_inputs(terms, available, type(self).__name__)
        self.terms = nn.ModuleDict(terms)
        self.active_terms = {name: term for name, term in terms.items() if term.active}

    def _add_terms(
        self, engine: TwoLoaderTrainer, quantities: dict, total: torch.Tensor, losses: dict, step: int
    ) -> torch.Tensor:
        """``total + sum_k w_k(step) * term_k``; each term's value goes into ``losses`` as ``loss_<name>`` and
        its current weight into ``engine.state.output`` as ``weight_<name>``."""
        memo: dict = {}
        for name, term in self.active_terms.items():
            value = term(quantities, memo)
            weight = term.weight_at(step)
            total = total + weight * value
            losses[f"loss_{name}"] = value.detach()
            engine.state.output[f"weight_{name}"] = weight
        return total

    def _next_second_batch(self) -> Any:
        if self._second_iter is None:
            if self._second_loader is None:
                raise ValueError(f"{type(self).__name__} needs its second data loader, but none was given.")
            self._second_iter = cycle(self._second_loader)
        return next(self._second_iter)

    def _autocast(self):
        if not self.amp:
            return nullcontext()
        return torch.autocast(device_type=torch.device(self.state.device).type, dtype=self.amp_dtype)

    def _backward_and_step(self, engine: TwoLoaderTrainer, total: torch.Tensor) -> None:
        """Backward pass of ``total`` and one optimiser step, firing MONAI's iteration events."""
        if engine.amp and engine.scaler is not None and self.precision.grad_scaler:
            engine.scaler.scale(total).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            total.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
