"""The domain-adaptation objective, recomputed outside the trainer.

The total loss of a step is rebuilt from separate forward passes of a copy of the network and from copies of
each loss module, with the ramp-ups active; the recomputation with the weak and strong views swapped must not
match, so the test would catch a trainer that feeds the views the wrong way round. Also: the weak (no-grad)
pass runs with the network in train mode (BatchNorm normalises with the weak batch's statistics and updates its
running statistics: three updates per step, source then weak then strong).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from ignite.engine import Events
from monai.engines.utils import IterationEvents
from torch import nn
from torch.utils.data import DataLoader

from conftest import ToySlices
from mito_monai.engines import DomainAdaptationTrainer, LossTerm
from mito_monai.losses import (
    AgentRelationLoss,
    FeatureConsistencyLoss,
    PrototypePseudoLabelLoss,
    PseudoLabelConsistencyLoss,
)
from mito_monai.networks.nets import MitoUNet

LAMBDAS = {"cf": 0.3, "reg": 0.2, "pro": 0.4, "corr": 0.5, "rank": 0.6}
RAMPUP = 2  # steps 0, 1, 2 of the test: ramp factors 0.0067, 0.29, 1
FEATURE_PAIR = ["target_features_strong", "target_features_weak"]


def Views(n: int, labelled: bool, seed: int) -> ToySlices:
    """Fixed images: labelled source slices, or target slices with a weak and a different strong view."""
    return ToySlices(n, labelled, seed, size=16, noise=0.5, label_dtype=torch.float)


def _losses() -> dict[str, nn.Module]:
    agents = AgentRelationLoss(num_agents=6, topk=3, pool_stride=2)
    return {
        "cf": FeatureConsistencyLoss(),
        "reg": PseudoLabelConsistencyLoss(),
        "pro": PrototypePseudoLabelLoss(tau=0.0, ema=0.5),  # tau 0: every target pixel is reliable
        "corr": agents,
        "rank": agents,
    }


def _inputs(name: str) -> list[str]:
    return {
        "cf": FEATURE_PAIR,
        "reg": ["target_logits_strong", "target_logits_weak"],
        "pro": ["source_features", "source_labels", "target_features_weak", "target_features_strong", "target_pseudo_labels"],
        "corr": FEATURE_PAIR,
        "rank": FEATURE_PAIR,
    }[name]


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, labels[:, 0].long())


def _objective(net, losses, source, labels, weak, strong, step: int) -> torch.Tensor:
    """The R4MITO objective of docs/design.md section 3.5 written out: separate passes, each term weighted by its ramp."""
    net.train()
    s_logits, s_feats = net(source, return_features=True)
    with torch.no_grad():
        w_logits, w_feats = net(weak, return_features=True)
    st_logits, st_feats = net(strong, return_features=True)
    ramp = math.exp(-5.0 * (1.0 - min(step, RAMPUP) / RAMPUP) ** 2)
    corr, rank = losses["corr"](st_feats, w_feats)
    values = {
        "cf": losses["cf"](st_feats, w_feats),
        "reg": losses["reg"](st_logits, w_logits),
        "pro": losses["pro"](s_feats, labels, w_feats, st_feats, w_logits.argmax(1, keepdim=True)),
        "corr": corr,
        "rank": rank,
    }
    return _ce(s_logits, labels) + sum(LAMBDAS[k] * ramp * v for k, v in values.items())


def _trainer(iterations: int) -> DomainAdaptationTrainer:
    torch.manual_seed(0)
    net = MitoUNet(channels=(4, 8, 16))
    losses = _losses()
    terms = {k: LossTerm(losses[k], LAMBDAS[k], _inputs(k), rampup_iterations=RAMPUP,
                         output={"corr": 0, "rank": 1}.get(k)) for k in LAMBDAS}
    return DomainAdaptationTrainer(
        amp=False,  # float32 on every machine (precision auto: tests/test_precision.py)
        device="cpu",
        max_epochs=1,
        epoch_length=iterations,
        train_data_loader=DataLoader(Views(2, True, seed=0), batch_size=2),
        target_data_loader=DataLoader(Views(2, False, seed=1), batch_size=2),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=_ce,
        terms=terms,
        decollate=False,
    )


def test_total_loss_equals_the_objective_recomputed_from_separate_passes():
    trainer = _trainer(iterations=3)
    source = Views(2, True, seed=0)
    target = Views(2, False, seed=1)
    x = source.images
    y = (x > 0.5).float()
    weak = target.images
    strong = (target.images + target.noise).flip(-1)
    snapshots, logged = [], []

    @trainer.on(Events.ITERATION_STARTED)
    def _snapshot(engine):  # the network and loss modules (the prototype EMA memory) as they enter the step
        losses = {name: term.loss for name, term in engine.terms.items()}
        snapshots.append((copy.deepcopy(engine.network), copy.deepcopy(losses)))

    @trainer.on(IterationEvents.LOSS_COMPLETED)
    def _log(engine):
        logged.append(float(engine.state.output["loss"]))

    trainer.run()
    assert len(logged) == 3
    for step, ((net, losses), total) in enumerate(zip(snapshots, logged)):
        expected = _objective(copy.deepcopy(net), copy.deepcopy(losses), x, y, weak, strong, step)
        assert total == pytest.approx(float(expected), rel=1e-5, abs=1e-6), step
        swapped = _objective(copy.deepcopy(net), copy.deepcopy(losses), x, y, strong, weak, step)
        assert abs(float(swapped) - total) > 1e-4, step  # the test tells the views apart
        without_ramp = _objective(copy.deepcopy(net), copy.deepcopy(losses), x, y, weak, strong, RAMPUP)
        assert abs(float(without_ramp) - total) > 1e-4 or step >= RAMPUP


def test_weak_pass_runs_in_train_mode():
    """BatchNorm: the weak view is normalised with its own batch statistics and updates the running statistics,
    so one step makes three running-statistics updates (source, weak, strong), as three train-mode passes do."""
    trainer = _trainer(iterations=1)
    reference = copy.deepcopy(trainer.network).train()
    source = Views(2, True, seed=0).images
    target = Views(2, False, seed=1)
    with torch.no_grad():
        reference(source)
        reference(target.images)
        reference((target.images + target.noise).flip(-1))
    two_updates = copy.deepcopy(trainer.network).train()
    with torch.no_grad():
        two_updates(source)
        two_updates((target.images + target.noise).flip(-1))
    trainer.run()
    bn = [n for n, m in trainer.network.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn
    got = dict(trainer.network.named_buffers())
    ref = dict(reference.named_buffers())
    other = dict(two_updates.named_buffers())
    for name in (f"{b}.running_mean" for b in bn):
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(got[f"{b}.running_mean"], other[f"{b}.running_mean"]) for b in bn)
    assert all(int(got[f"{b}.num_batches_tracked"]) == 3 for b in bn)
