"""The semi-supervised trainer: a labelled loader plus a cycled loader of unlabelled slices."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch import nn

from mito_monai.engines.loss_term import SEMI_SUPERVISED_INPUTS, LossTerm
from mito_monai.engines.two_loader import TwoLoaderTrainer

__all__ = ["SemiSupervisedTrainer"]

_BRANCH_1 = {"labelled_logits_1", "logits_1", "unlabelled_logits_1", "prototypes_1", "mito_features_1", "reliability"}
_BRANCH_DETAILS = {"prototypes", "prototypes_1", "mito_features", "mito_features_1", "reliability"}
_UNLABELLED = {
    "logits",
    "logits_1",
    "unlabelled_logits",
    "unlabelled_logits_1",
    "teacher_logits",
    *_BRANCH_DETAILS,
}


class SemiSupervisedTrainer(TwoLoaderTrainer):
    """MONAI ``SupervisedTrainer`` for semi-supervised segmentation (a few labelled slices, many unlabelled).

    Each iteration takes one batch of the labelled loader (``train_data_loader``, which drives the epoch)
    and, when an active term needs it, one batch of ``unlabelled_data_loader`` (cycled, never cached). The
    labelled images and the unlabelled view ``unlabelled_key`` go through the network as one batch
    (labelled first), so normalisation layers see both. With a two-branch network (one that has
    ``forward_branch(x, branch)`` and ``reliability(out0, out1)``, i.e.
    :class:`~mito_monai.networks.nets.DualRelNet`) branch 1 only runs when a term needs it; any other network
    is called as ``network(x)`` and provides the branch-0 quantities. Every iteration calls the network once
    (``network(x, with_reliability=...)`` for both branches, ``network(x, branch=0, details=True)`` for one), so a
    ``DistributedDataParallel``-wrapped DualRelNet (its ``module`` is inspected) synchronises the gradients of
    every part used; wrap it with ``find_unused_parameters=True`` unless the terms use both branches and the
    reliability head (DualRel's ``rpc``).

    The objective is ``loss_function(labelled_logits, labels) + sum_k w_k(t) * term_k`` with the terms'
    inputs named in :data:`~mito_monai.engines.SEMI_SUPERVISED_INPUTS`. The methods of DualRel's comparison
    are sets of terms on this one trainer (see :data:`~mito_monai.engines.SSL_METHODS`):

    - supervised only: no term;
    - Mean Teacher: a consistency term between ``unlabelled_logits`` (the student on the strong view) and
      ``teacher_logits`` (an EMA ``teacher`` on the weak view, run in eval mode without gradient), the teacher
      updated after every step;
    - CPS: the second branch's supervised term and the cross pseudo supervision of ``logits``/``logits_1``;
    - DualRel: the second branch's supervised term, reliable prototype consistency and diversity.

    Every term (unweighted) and its current weight go into ``engine.state.output`` as ``loss_<name>`` and
    ``weight_<name>``, the branch-0 supervised term as ``loss_sup``, and ``loss`` is the total, so MONAI's stock
    handlers (stats, validation, checkpoints, MLflow) work unchanged. ``engine.state.output["pred"]`` holds the
    branch-0 logits of the labelled batch.

    Args:
        device, max_epochs, train_data_loader, network, optimizer, loss_function, epoch_length,
            and the remaining keyword arguments: as for ``monai.engines.SupervisedTrainer``;
            ``train_data_loader`` yields labelled batches (``image``, ``label``).
        unlabelled_data_loader: loader of unlabelled batches; required when an active term needs one.
        terms: name -> :class:`~mito_monai.engines.LossTerm`; inactive terms are skipped with the forward passes
            only they need.
        teacher: the Mean-Teacher model, e.g. ``torch.optim.swa_utils.AveragedModel(network,
            multi_avg_fn=get_ema_multi_avg_fn(0.99), use_buffers=True)``; required when a term uses
            ``teacher_logits``. It must have ``update_parameters(network)``, called after each optimiser step.
        unlabelled_key: batch key of the unlabelled view the network trains on.
        teacher_key: batch key of the unlabelled view the teacher sees.
        amp, amp_dtype: the precision, ``"auto"`` by default (chosen by the hardware; see
            :class:`~mito_monai.engines.TwoLoaderTrainer`).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        unlabelled_data_loader: Iterable | None = None,
        terms: Mapping[str, LossTerm] | None = None,
        teacher: nn.Module | None = None,
        unlabelled_key: str = "image",
        teacher_key: str = "image",
        amp_dtype: torch.dtype | str = "auto",
        epoch_length: int | None = None,
        train_handlers: Sequence | None = None,
        amp: Any = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            epoch_length=epoch_length,
            train_handlers=train_handlers,
            amp=amp,
            second_data_loader=unlabelled_data_loader,
            amp_dtype=amp_dtype,
            **kwargs,
        )
        self._set_terms(terms, SEMI_SUPERVISED_INPUTS)
        needed = {q for term in self.active_terms.values() for q in term.inputs}
        core = network.module if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else network
        self._two_branch = hasattr(core, "forward_branch") and hasattr(core, "reliability")
        if needed & (_BRANCH_1 | _BRANCH_DETAILS) and not self._two_branch:
            raise ValueError(
                f"terms {sorted(self.active_terms)} need {sorted(needed & (_BRANCH_1 | _BRANCH_DETAILS))}, which only a "
                f"two-branch network with forward_branch() and reliability() (DualRelNet) provides; "
                f"got {type(network).__name__}."
            )
        self._needs_branch_1 = bool(needed & _BRANCH_1)
        self._needs_reliability = "reliability" in needed
        self._needs_unlabelled = bool(needed & _UNLABELLED)
        self._needs_teacher = "teacher_logits" in needed
        if self._needs_unlabelled and unlabelled_data_loader is None:
            raise ValueError(
                f"terms {sorted(self.active_terms)} use unlabelled images, but no unlabelled_data_loader was given."
            )
        if self._needs_teacher and (teacher is None or not hasattr(teacher, "update_parameters")):
            raise ValueError(
                "a term uses teacher_logits: pass a teacher with update_parameters(network), e.g. "
                "torch.optim.swa_utils.AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(0.99))."
            )
        self.teacher = teacher
        self._core_network = core
        self.unlabelled_data_loader = unlabelled_data_loader
        self.unlabelled_key = unlabelled_key
        self.teacher_key = teacher_key

    def _unlabelled_views(self, engine: SemiSupervisedTrainer) -> dict[str, torch.Tensor]:
        raw = self._next_second_batch()
        keys = {self.unlabelled_key} | ({self.teacher_key} if self._needs_teacher else set())
        missing = sorted(k for k in keys if k not in raw)
        if missing:
            raise KeyError(
                f"unlabelled batch lacks {missing} (has {sorted(raw)}); set unlabelled_key/teacher_key to its image "
                "keys, or end the unlabelled transform with mito_monai.transforms.WeakStrongViewsd."
            )
        return {k: raw[k].to(engine.state.device, non_blocking=engine.non_blocking) for k in keys}

    @staticmethod
    def _store(out: Any, quantities: dict, suffix: str, num_labelled: int) -> None:
        """Store one branch's quantities under ``suffix``: those of an output with ``loss_quantities()`` (a
        mapping holding ``logits``, e.g. a DualRel branch's), or the plain network's output as ``logits``."""
        if callable(getattr(out, "loss_quantities", None)):
            named = dict(out.loss_quantities())
            logits = named.pop("logits")
            for name, value in named.items():
                quantities[name + suffix] = value
        else:
            logits = out[0] if isinstance(out, (tuple, list)) else out
        quantities["logits" + suffix] = logits
        quantities["labelled_logits" + suffix] = logits[:num_labelled]
        quantities["unlabelled_logits" + suffix] = logits[num_labelled:]

    def _forward(self, images: torch.Tensor, quantities: dict, num_labelled: int) -> None:
        """One call of the (possibly DDP-wrapped) network on ``images`` (labelled first)."""
        if not self._two_branch:
            self._store(self.network(images), quantities, "", num_labelled)
        elif self._needs_branch_1:
            out = self.network(images, with_reliability=self._needs_reliability)
            self._store(out.branches[0], quantities, "", num_labelled)
            self._store(out.branches[1], quantities, "_1", num_labelled)
            if self._needs_reliability:
                quantities["reliability"] = out.reliability
        else:
            self._store(self.network(images, branch=0, details=True), quantities, "", num_labelled)

    def _teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        # the teacher is a fixed target: inference mode, normalised by its (averaged) running statistics
        self.teacher.eval()
        with torch.no_grad():
            out = self.teacher(images, branch=0) if self._two_branch else self.teacher(images)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.detach()

    def _iteration(self, engine: SemiSupervisedTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, labels = batch[0], batch[1]
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: labels}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        step = engine.state.iteration - 1  # finished iterations before this one
        num_labelled = inputs.shape[0]

        views = self._unlabelled_views(engine) if self._needs_unlabelled else {}
        images = torch.cat([inputs, views[self.unlabelled_key]], dim=0) if views else inputs

        with self._autocast():
            quantities: dict[str, Any] = {"labels": labels}
            self._forward(images, quantities, num_labelled)
            if self._needs_teacher:
                quantities["teacher_logits"] = self._teacher_logits(views[self.teacher_key])
            engine.state.output[Keys.PRED] = quantities["labelled_logits"]
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            sup = engine.loss_function(quantities["labelled_logits"], labels).mean()
            total = sup
            losses = {"loss_sup": sup.detach()}
            total = self._add_terms(engine, quantities, total, losses, step)
        engine.state.output[Keys.LOSS] = total
        engine.state.output.update(losses)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        self._backward_and_step(engine, total)
        if self._needs_teacher:
            self.teacher.update_parameters(self._core_network)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
