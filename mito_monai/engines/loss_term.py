"""A weighted, ramped-up loss term that names the trainer quantities it consumes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from monai.utils import str2bool
from torch import nn

from mito_monai.engines.schedules import sigmoid_rampup

__all__ = ["DOMAIN_ADAPTATION_INPUTS", "LossTerm", "SEMI_SUPERVISED_INPUTS", "TERM_INPUTS", "check_term_inputs"]

#: the quantities :class:`~mito_monai.engines.DomainAdaptationTrainer` hands to loss terms, with their shapes
DOMAIN_ADAPTATION_INPUTS: dict[str, str] = {
    "source_logits": "(B, 2, H, W) logits of the labelled batch",
    "source_features": "(B, C, H, W) last decoder features of the labelled batch",
    "source_labels": "(B, 1, H, W) integer labels of the labelled batch",
    "target_logits_weak": "(B, 2, H, W) logits of the weak target view (no gradient)",
    "target_features_weak": "(B, C, H, W) features of the weak target view (no gradient)",
    "target_logits_strong": "(B, 2, H, W) logits of the strong target view",
    "target_features_strong": "(B, C, H, W) features of the strong target view",
    "target_pseudo_labels": "(B, 1, H, W) argmax of the weak target logits",
}

#: the quantities :class:`~mito_monai.engines.SemiSupervisedTrainer` hands to loss terms, with their shapes
#: (L labelled and U unlabelled images per iteration; "all" = the L labelled then the U unlabelled images;
#: a ``_1`` suffix means the second branch of a two-branch network such as ``DualRelNet``)
SEMI_SUPERVISED_INPUTS: dict[str, str] = {
    "labels": "(L, 1, H, W) integer labels of the labelled batch",
    "labelled_logits": "(L, 2, H, W) branch-0 logits of the labelled batch",
    "labelled_logits_1": "(L, 2, H, W) branch-1 logits of the labelled batch",
    "logits": "(L + U, 2, H, W) branch-0 logits of all images",
    "logits_1": "(L + U, 2, H, W) branch-1 logits of all images",
    "unlabelled_logits": "(U, 2, H, W) branch-0 logits of the unlabelled batch",
    "unlabelled_logits_1": "(U, 2, H, W) branch-1 logits of the unlabelled batch",
    "teacher_logits": "(U, 2, H, W) logits of the teacher (e.g. a Mean-Teacher EMA model) on the unlabelled batch, no gradient",
    "prototypes": "(L + U, K, C) branch-0 prototypes of all images (DualRelNet)",
    "prototypes_1": "(L + U, K, C) branch-1 prototypes of all images (DualRelNet)",
    "mito_features": "(L + U, K, C) branch-0 mito features of all images (DualRelNet)",
    "mito_features_1": "(L + U, K, C) branch-1 mito features of all images (DualRelNet)",
    "reliability": "(L + U, K) prototype reliabilities of all images (DualRelNet)",
}

#: every quantity a trainer can hand to a loss term, with its shape
TERM_INPUTS: dict[str, str] = {**DOMAIN_ADAPTATION_INPUTS, **SEMI_SUPERVISED_INPUTS}


class LossTerm(nn.Module):
    """One term ``weight * rampup(t) * loss(*inputs)`` of a training objective.

    Args:
        loss: the loss module (e.g. ``mito_monai.losses.FeatureConsistencyLoss()``); called with the
            trainer quantities named in ``inputs``, in that order, and must return a scalar.
        weight: the term's weight (``lambda``). A weight of 0 switches the term off: the trainer
            then does not compute it (nor the forward passes only it needs).
        inputs: names from :data:`TERM_INPUTS`.
        rampup_iterations: ``T`` of the sigmoid ramp-up ``exp(-5 (1 - min(t, T)/T)^2)``; 0 = no ramp.
        enabled: a switch for configs (ablations); ``False`` is the same as ``weight=0``. The strings a
            command line passes (``"true"``/``"false"``, ``"1"``/``"0"``, ``"yes"``/``"no"``, any case) are
            parsed, never taken as truthy.
        output: for a loss that returns several values (a tuple, e.g.
            ``mito_monai.losses.AgentRelationLoss`` -> ``(L_corr, L_rank)``), the index of this term's
            value. Terms that share one loss module instance and the same inputs share one call per
            iteration (see ``forward``'s ``memo``), so the common work is done once.
    """

    def __init__(
        self,
        loss: nn.Module,
        weight: float,
        inputs: Sequence[str],
        rampup_iterations: int = 0,
        enabled: bool = True,
        output: int | None = None,
    ) -> None:
        super().__init__()
        if not callable(loss):
            raise TypeError(f"loss must be callable, got {type(loss).__name__}.")
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}.")
        if isinstance(inputs, str) or not inputs:
            raise ValueError(f"inputs must be a non-empty list of names from {sorted(TERM_INPUTS)}, got {inputs!r}.")
        unknown = [name for name in inputs if name not in TERM_INPUTS]
        if unknown:
            raise ValueError(f"unknown loss-term inputs {unknown}; expected names from {sorted(TERM_INPUTS)}.")
        if rampup_iterations < 0:
            raise ValueError(f"rampup_iterations must be >= 0, got {rampup_iterations}.")
        self.loss = loss
        self.weight = float(weight)
        self.inputs = tuple(inputs)
        self.rampup_iterations = int(rampup_iterations)
        if isinstance(enabled, str):
            try:
                enabled = str2bool(enabled)
            except ValueError:
                raise ValueError(f"enabled must be a boolean or 'true'/'false', got {enabled!r}.") from None
        elif not isinstance(enabled, (bool, int)):
            raise TypeError(f"enabled must be a boolean, got {type(enabled).__name__}.")
        self.enabled = bool(enabled)
        if output is not None and (isinstance(output, bool) or not isinstance(output, int) or output < 0):
            raise ValueError(f"output must be None or an index >= 0, got {output!r}.")
        self.output = output

    @property
    def active(self) -> bool:
        """Whether the term contributes at all."""
        return self.enabled and self.weight > 0

    def weight_at(self, iteration: int) -> float:
        """The effective weight at ``iteration`` (0-based count of finished iterations)."""
        if not self.active:
            return 0.0
        return self.weight * sigmoid_rampup(iteration, self.rampup_iterations)

    def forward(self, quantities: dict[str, torch.Tensor], memo: dict | None = None) -> torch.Tensor:
        """The unweighted loss value on the named ``quantities``.

        Args:
            quantities: name -> tensor, as computed by the trainer this iteration.
            memo: a dict the trainer renews every iteration; the loss module's result is kept in it
                under (module, inputs), so another term using the same module and inputs reuses it.
        """
        missing = [name for name in self.inputs if name not in quantities]
        if missing:
            raise KeyError(f"the trainer did not compute {missing} for this loss term.")
        key = (id(self.loss), self.inputs)
        if memo is not None and key in memo:
            value = memo[key]
        else:
            value = self.loss(*(quantities[name] for name in self.inputs))
            if memo is not None:
                memo[key] = value
        if self.output is not None:
            if not isinstance(value, (tuple, list)) or self.output >= len(value):
                raise ValueError(
                    f"output={self.output} selects from a tuple, but {type(self.loss).__name__} returned "
                    f"{type(value).__name__}{'' if not isinstance(value, (tuple, list)) else f' of {len(value)}'}."
                )
            value = value[self.output]
        return value

    def get_extra_state(self) -> dict[str, Any]:
        """The ramp-up length goes into checkpoints, so that a resumed run keeps the schedule it started with."""
        return {"rampup_iterations": self.rampup_iterations}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Adopt a checkpoint's ramp-up length (a resume that asks for more iterations keeps the original ramp)."""
        saved = int(state["rampup_iterations"])
        if saved != self.rampup_iterations:
            logging.getLogger(__name__).warning(
                f"keeping the checkpoint's ramp-up of {saved} iterations (this run configured {self.rampup_iterations})."
            )
        self.rampup_iterations = saved

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight}, inputs={self.inputs}, rampup_iterations={self.rampup_iterations}, "
            f"enabled={self.enabled}, output={self.output}"
        )


def check_term_inputs(terms: dict[str, LossTerm], available: dict[str, str], trainer: str) -> None:
    """Raise a ValueError naming the term if an active term needs a quantity ``trainer`` does not compute."""
    for name, term in terms.items():
        unknown = [q for q in term.inputs if q not in available]
        if term.active and unknown:
            raise ValueError(
                f"loss term {name!r} needs {unknown}, which {trainer} does not compute; "
                f"it computes {sorted(available)}."
            )
