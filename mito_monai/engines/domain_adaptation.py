"""The domain-adaptation trainer: a labelled source loader plus a cycled unlabelled target loader."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from torch.optim.swa_utils import update_bn
from monai.utils.enums import CommonKeys as Keys
from torch import nn

from mito_monai.engines.loss_term import DOMAIN_ADAPTATION_INPUTS, LossTerm
from mito_monai.engines.two_loader import TwoLoaderTrainer, cycle

__all__ = ["DomainAdaptationTrainer", "cycle"]


class DomainAdaptationTrainer(TwoLoaderTrainer):
    """MONAI ``SupervisedTrainer`` for unsupervised domain adaptation (source labelled, target not).

    Each iteration takes one batch of the labelled loader (``train_data_loader``: the source for
    domain adaptation, the target itself for an Oracle run) and, when any unsupervised term is
    active, one batch of ``target_data_loader`` (cycled, never cached), which carries two views of
    the same crops sharing geometry: ``target_weak_key`` and ``target_strong_key``, each (B, 1, H, W).

    Forward passes are only run when an active term needs them:

    - labelled batch: logits (and features if a term uses ``source_features``), with gradient;
    - weak target view: logits/features without gradient (teacher signal, pseudo-labels);
    - strong target view: logits/features with gradient.

    Teacher: by default (``teacher=None``, the papers' setting) the network itself produces the weak
    view's signal. With ``teacher`` (an exponential moving average of the network, e.g.
    ``torch.optim.swa_utils.AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(0.99),
    use_buffers=True)``), the weak view's logits, features and pseudo-labels come from the teacher,
    which is updated with ``teacher.update_parameters(network)`` after every optimiser step (and once
    before the first step, so that it starts from the network's weights, a warm start included).

    Source-free adaptation (``source_free=True``): ``train_data_loader`` itself yields the unlabelled
    target batches (the two views) and there is no labelled batch, no supervised term and no source
    forward pass; ``loss_function`` is not used and may be None. Terms that read source quantities
    (``source_*``) are refused. Start from a source model (a warm start) and use a teacher: without
    labels the only signal is the weak view's prediction.

    BatchNorm re-estimation on the target (``bn_adaptation_batches=N``, AdaBN, Li et al. 2016): before
    the first step of a fresh run (not of a resumed one, whose statistics come from its checkpoint),
    every BatchNorm layer of the network forgets its running statistics and re-estimates them as the
    plain average over N weak target batches (``torch.optim.swa_utils.update_bn``); a teacher then
    starts from these statistics. Nothing else of the network changes.

    BatchNorm of the weak pass (``weak_bn``): ``"train"`` (default) normalises the weak target batch
    with its own statistics; for the network itself this also updates its running statistics with
    target data, so a step updates them three times (source, weak, strong passes, in that order) and
    they end up about two-thirds target, an implicit AdaBN as in CAFA's separate source and target
    passes (tested in ``tests/test_domain_adaptation_objective.py``). ``"eval"`` uses the running statistics of
    the model that produces the weak view and updates nothing. A teacher's own running statistics are
    never moved by its forward pass: they are the average of the network's.

    The objective is ``loss_function(source_logits, source_labels) + sum_k w_k(t) * term_k`` where
    ``w_k(t)`` is each :class:`~mito_monai.engines.LossTerm`'s weight with its ramp-up. Every term
    (unweighted) and its current weight go into ``engine.state.output`` as ``loss_<name>`` and
    ``weight_<name>``; ``loss`` is the total, so MONAI's stock handlers (stats, validation,
    checkpoints, MLflow) work unchanged. The network must accept ``return_features=True`` and
    return ``(logits, features)`` when a term uses features (``MitoUNet`` does).

    Args:
        device, max_epochs, train_data_loader, network, optimizer, loss_function, epoch_length,
            and the remaining keyword arguments: as for ``monai.engines.SupervisedTrainer``.
        target_data_loader: loader of unlabelled target batches; required when a term is active.
        terms: name -> :class:`LossTerm`; inactive terms (weight 0 or ``enabled=False``) are skipped.
        target_weak_key, target_strong_key: batch keys of the two target views.
        amp, amp_dtype: the precision, ``"auto"`` by default (chosen by the hardware: bfloat16 autocast on CPUs
            with AVX-512 BF16 / AMX and on CUDA with bfloat16, float32 on other CPUs, float16 with a gradient
            scaler on older CUDA); see :class:`~mito_monai.engines.TwoLoaderTrainer`.
        teacher: optional EMA teacher of ``network`` for the weak view (see above); must have
            ``update_parameters(network)``.
        weak_bn: ``"train"`` or ``"eval"``: BatchNorm mode of the weak (no-gradient) pass.
        source_free: adapt without source data (see above).
        bn_adaptation_batches: number of target batches for the BatchNorm re-estimation before the first
            step (0: off).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        target_data_loader: Iterable | None = None,
        terms: Mapping[str, LossTerm] | None = None,
        target_weak_key: str = "image_weak",
        target_strong_key: str = "image_strong",
        amp_dtype: torch.dtype | str = "auto",
        teacher: nn.Module | None = None,
        weak_bn: str = "train",
        source_free: bool = False,
        bn_adaptation_batches: int = 0,
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
            second_data_loader=target_data_loader,
            amp_dtype=amp_dtype,
            **kwargs,
        )
        self._set_terms(terms, DOMAIN_ADAPTATION_INPUTS)
        self.source_free = bool(source_free)
        if self.source_free:
            sourced = sorted(
                name for name, term in self.active_terms.items() if any(i.startswith("source_") for i in term.inputs)
            )
            if sourced:
                raise ValueError(
                    f"source_free=True: terms {sourced} read source data; switch them off for source-free adaptation."
                )
            if not self.active_terms:
                raise ValueError("source_free=True needs at least one active target term (e.g. 'reg' with a teacher).")
            target_data_loader = train_data_loader  # the main loader carries the target views
        if isinstance(bn_adaptation_batches, bool) or not isinstance(bn_adaptation_batches, int) or bn_adaptation_batches < 0:
            raise ValueError(f"bn_adaptation_batches must be an integer >= 0, got {bn_adaptation_batches!r}.")
        if bn_adaptation_batches and target_data_loader is None:
            raise ValueError("bn_adaptation_batches > 0 re-estimates BatchNorm on the target: give target_data_loader.")
        self.bn_adaptation_batches = bn_adaptation_batches
        if self.active_terms and target_data_loader is None:
            raise ValueError(
                f"terms {sorted(self.active_terms)} act on the target domain, but no target_data_loader was given."
            )
        if teacher is not None and not callable(getattr(teacher, "update_parameters", None)):
            raise TypeError(
                f"teacher must have update_parameters(network) (e.g. torch.optim.swa_utils.AveragedModel), "
                f"got {type(teacher).__name__}."
            )
        if weak_bn not in ("train", "eval"):
            raise ValueError(f"weak_bn must be 'train' or 'eval', got {weak_bn!r}.")
        self.teacher = teacher
        self.weak_bn = weak_bn
        self.target_data_loader = target_data_loader
        self.target_weak_key = target_weak_key
        self.target_strong_key = target_strong_key
        needed = {name for term in self.active_terms.values() for name in term.inputs}
        self._needs_source_features = "source_features" in needed
        self._needs_weak = bool(needed & {"target_logits_weak", "target_features_weak", "target_pseudo_labels"})
        self._needs_strong = bool(needed & {"target_logits_strong", "target_features_strong"})
        self._needs_target_features = bool(needed & {"target_features_weak", "target_features_strong"})

    def _forward(
        self, images: torch.Tensor, features: bool, model: nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        model = self.network if model is None else model
        if features:
            logits, feats = model(images, return_features=True)
            return logits, feats
        out = model(images)
        return (out[0] if isinstance(out, (tuple, list)) else out), None

    def _weak_forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weak view through the teacher (or the network), without gradient, in ``weak_bn`` mode."""
        model = self.network if self.teacher is None else self.teacher
        model.train(self.weak_bn == "train")
        # a teacher's buffers (BatchNorm running statistics) are an average of the network's: its own
        # train-mode forward must not move them
        kept = [(b, b.clone()) for b in self.teacher.buffers()] if self.teacher is not None else []
        try:
            with torch.no_grad():
                return self._forward(images, self._needs_target_features, model)
        finally:
            with torch.no_grad():
                for buffer, value in kept:
                    buffer.copy_(value)
            self.network.train()

    def adapt_batchnorm(self) -> int:
        """Re-estimate the network's BatchNorm running statistics on ``bn_adaptation_batches`` weak target
        batches (a fresh pass of the target loader); returns the number of batches used."""
        loader = self.target_data_loader
        key, device = self.target_weak_key, self.state.device

        def images():
            for i, raw in enumerate(cycle(loader)):
                if i >= self.bn_adaptation_batches:
                    return
                if key not in raw:
                    raise KeyError(f"target batch lacks {key!r} (has {sorted(raw)}) for the BatchNorm re-estimation.")
                yield raw[key].to(device)

        update_bn(images(), self.network)
        return self.bn_adaptation_batches

    def _target_views(self, raw: Mapping) -> dict[str, torch.Tensor]:
        target = {
            key: raw[key].to(self.state.device, non_blocking=self.non_blocking)
            for key in (self.target_weak_key, self.target_strong_key)
            if key in raw
        }
        missing = [k for k in (self.target_weak_key, self.target_strong_key) if k not in target]
        if missing:
            raise KeyError(
                f"target batch lacks {missing} (has {sorted(raw)}); the target transform must end with "
                "mito_monai.transforms.WeakStrongViewsd."
            )
        return target

    def _iteration(self, engine: DomainAdaptationTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        if self.bn_adaptation_batches and engine.state.iteration == 1:  # a fresh run, before its first step
            self.adapt_batchnorm()
        if self.source_free:
            target = self._target_views(batchdata)
            inputs, targets = target[self.target_weak_key], None
        else:
            batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
            inputs, targets = batch[0], batch[1]
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        step = engine.state.iteration - 1  # finished iterations before this one
        if self.teacher is not None and int(getattr(self.teacher, "n_averaged", 1)) == 0:
            self.teacher.update_parameters(engine.network)  # start from the network's (warm-start) weights

        if not self.source_free:
            needs_target = self._needs_weak or self._needs_strong
            target = self._target_views(self._next_second_batch()) if needs_target else None
        with self._autocast():
            quantities: dict[str, torch.Tensor] = {}
            if self.source_free:
                total = torch.zeros((), device=engine.state.device)
                losses: dict[str, torch.Tensor] = {}
            else:
                quantities["source_labels"] = targets
                logits, feats = self._forward(inputs, self._needs_source_features)
                quantities["source_logits"] = logits
                if feats is not None:
                    quantities["source_features"] = feats
                engine.state.output[Keys.PRED] = logits
                engine.fire_event(IterationEvents.FORWARD_COMPLETED)
                sup = engine.loss_function(logits, targets).mean()
                total = sup
                losses = {"loss_sup": sup.detach()}
            if target is not None:
                if self._needs_weak:
                    w_logits, w_feats = self._weak_forward(target[self.target_weak_key])
                    quantities["target_logits_weak"] = w_logits.detach()
                    quantities["target_pseudo_labels"] = w_logits.detach().argmax(dim=1, keepdim=True)
                    if w_feats is not None:
                        quantities["target_features_weak"] = w_feats.detach()
                if self._needs_strong:
                    s_logits, s_feats = self._forward(target[self.target_strong_key], self._needs_target_features)
                    quantities["target_logits_strong"] = s_logits
                    if s_feats is not None:
                        quantities["target_features_strong"] = s_feats
                    if self.source_free:
                        engine.state.output[Keys.PRED] = s_logits
                        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            total = self._add_terms(engine, quantities, total, losses, step)
        engine.state.output[Keys.LOSS] = total
        engine.state.output.update(losses)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        self._backward_and_step(engine, total)
        if self.teacher is not None:
            self.teacher.update_parameters(engine.network)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
