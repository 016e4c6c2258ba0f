"""SemiSupervisedTrainer: the four SSL methods as term sets, checked against hand-computed objectives; partitions."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from conftest import ToySlices
from mito_monai.datasets import labelled_count, make_demo_data, parse_partition, partition_slices, partition_split
from mito_monai.engines import SSL_METHODS, LossTerm, SemiSupervisedTrainer, method_terms
from mito_monai.losses import (
    CrossPseudoSupervisionLoss,
    PrototypeDiversityLoss,
    ReliablePrototypeConsistencyLoss,
    SoftmaxConsistencyLoss,
)
from mito_monai.networks.nets import DualRelNet, DualRelSingleBranch


def tiny_dualrel(seed: int = 0) -> DualRelNet:
    net = DualRelNet(
        embed_dim=8, num_filters=4, num_references=4, encoder_depth=10, decoder_channels=(16, 8, 8, 8, 8),
        branch_seeds=(2 * seed + 1, 2 * seed + 2),
    )
    return net.double()


def Slices(n: int, labelled: bool, seed: int = 0, size: int = 32) -> ToySlices:
    return ToySlices(n, labelled, seed, size=size, dtype=torch.float64, strong=lambda x, noise: 1.0 - x)


class Forbidden:
    def __iter__(self):
        raise AssertionError("the unlabelled loader must not be touched")


def ce(logits, labels):
    return F.cross_entropy(logits, labels[:, 0])


class CE(nn.Module):
    def forward(self, logits, labels):
        return ce(logits, labels)


def terms_for(method: str) -> dict[str, LossTerm]:
    all_terms = {
        "sup_1": LossTerm(CE(), 1.0, ["labelled_logits_1", "labels"]),
        "mt": LossTerm(SoftmaxConsistencyLoss(), 2.0, ["unlabelled_logits", "teacher_logits"]),
        "cps": LossTerm(CrossPseudoSupervisionLoss(), 1.5, ["logits", "logits_1"]),
        "rpc": LossTerm(ReliablePrototypeConsistencyLoss(reg_weight=1.0), 1.0, ["prototypes", "prototypes_1", "reliability"]),
        "div": LossTerm(PrototypeDiversityLoss(), 0.05, ["mito_features"]),
        "div_1": LossTerm(PrototypeDiversityLoss(), 0.05, ["mito_features_1"]),
    }
    active = set(method_terms(method))
    return {k: v for k, v in all_terms.items() if k in active}


def make_trainer(method: str, net: nn.Module, labelled, unlabelled, iterations: int = 1, lr: float = 0.0):
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    teacher = None
    if "mt" in method_terms(method):
        teacher = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    return SemiSupervisedTrainer(
        amp=False,  # float32 on every machine (precision auto: tests/test_precision.py)
        device="cpu", max_epochs=1, epoch_length=iterations,
        train_data_loader=labelled, unlabelled_data_loader=unlabelled,
        network=net, optimizer=opt, loss_function=ce, terms=terms_for(method), teacher=teacher,
        unlabelled_key="image_strong" if method == "mean_teacher" else "image_weak", teacher_key="image_weak",
        decollate=False,
    )


def expected_objective(method: str, net: DualRelNet, x, y, u_weak, u_strong, teacher=None) -> dict[str, float]:
    """The objective computed by hand from separate forward passes of each branch."""
    net = copy.deepcopy(net).train()
    u = u_strong if method == "mean_teacher" else u_weak
    allx = x if method == "supervised" else torch.cat([x, u])  # one batch: labelled, then unlabelled
    b0 = net.forward_branch(allx, 0)
    out = {"sup": ce(b0.log_probabilities[: len(x)], y).item()}
    if method in ("cps", "dualrel"):
        b1 = net.forward_branch(allx, 1)
        out["sup_1"] = ce(b1.log_probabilities[: len(x)], y).item()
    if method == "cps":
        pa, pb = b0.log_probabilities.argmax(1), b1.log_probabilities.argmax(1)
        out["cps"] = (F.cross_entropy(b0.log_probabilities, pb) + F.cross_entropy(b1.log_probabilities, pa)).item()
    if method == "dualrel":
        r = net.reliability(b0, b1)
        dist = (b0.prototypes - b1.prototypes).norm(dim=-1)
        out["rpc"] = (torch.exp(1 - 1 / r) * dist - r).mean().item()
        for name, b in (("div", b0), ("div_1", b1)):
            f = F.normalize(b.mito_features, dim=-1)
            cos = f @ f.transpose(1, 2)
            out[name] = (cos.sum(dim=(1, 2)) - cos.diagonal(dim1=1, dim2=2).sum(-1)).mean().item()
    if method == "mean_teacher":
        t = copy.deepcopy(teacher).eval()
        with torch.no_grad():
            tl = t(u_weak, branch=0)
        out["mt"] = ((b0.log_probabilities[len(x):].softmax(1) - tl.softmax(1)) ** 2).mean().item()
    weights = {"sup": 1.0, "sup_1": 1.0, "cps": 1.5, "rpc": 1.0, "div": 0.05, "div_1": 0.05, "mt": 2.0}
    out["loss"] = sum(weights[k] * v for k, v in out.items())
    return out


@pytest.mark.parametrize("method", sorted(SSL_METHODS))
def test_objective_matches_hand_computation(method):
    method = {"meanteacher": "mean_teacher"}.get(method, method)
    torch.manual_seed(0)
    net = tiny_dualrel()
    labelled, unlabelled = Slices(2, True, 1), Slices(2, False, 2)
    x = torch.stack([labelled[i]["image"] for i in range(2)])
    y = torch.stack([labelled[i]["label"] for i in range(2)])
    uw = torch.stack([unlabelled[i]["image_weak"] for i in range(2)])
    us = torch.stack([unlabelled[i]["image_strong"] for i in range(2)])
    trainer = make_trainer(
        method, net, DataLoader(labelled, batch_size=2),
        DataLoader(unlabelled, batch_size=2) if method != "supervised" else Forbidden(),
    )
    expected = expected_objective(method, net, x, y, uw, us, trainer.teacher)
    trainer.run()
    out = trainer.state.output
    assert set(k for k in out if k.startswith("loss_")) == {"loss_sup"} | {f"loss_{t}" for t in method_terms(method)}
    for key, value in expected.items():
        name = key if key == "loss" else f"loss_{key}"
        assert float(out[name].detach()) == pytest.approx(value, rel=1e-6, abs=1e-9), name  # the losses work in float32
    assert out["pred"].shape == (2, 2, 32, 32)


def test_mean_teacher_updates_the_ema_teacher():
    torch.manual_seed(0)
    net = tiny_dualrel()
    trainer = make_trainer(
        "mean_teacher", net, DataLoader(Slices(2, True, 1), batch_size=1), DataLoader(Slices(2, False, 2), batch_size=1),
        iterations=2, lr=0.1,
    )
    snapshots = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: snapshots.append(copy.deepcopy(net.state_dict())))
    trainer.run()
    teacher = trainer.teacher.module.state_dict()
    # first update copies the student, the second is 0.9 * teacher + 0.1 * student (floating buffers averaged too)
    for key, value in teacher.items():
        if not torch.is_floating_point(value):
            continue
        expected = 0.9 * snapshots[0][key] + 0.1 * snapshots[1][key]
        torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12, msg=key)
    assert not torch.equal(snapshots[0]["branches.0.mito_filters"], snapshots[1]["branches.0.mito_filters"])


def test_supervised_only_runs_one_branch_and_never_reads_unlabelled():
    net = tiny_dualrel()
    calls = []
    for i, branch in enumerate(net.branches):
        branch.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
    trainer = make_trainer("supervised", net, DataLoader(Slices(2, True), batch_size=2), Forbidden(), iterations=2)
    trainer.run()
    assert calls == [0, 0]


def test_plain_network_for_single_branch_methods_and_errors():
    conv = nn.Conv2d(1, 2, 3, padding=1).double()
    labelled, unlabelled = DataLoader(Slices(2, True), batch_size=2), DataLoader(Slices(2, False), batch_size=2)
    teacher = AveragedModel(conv, multi_avg_fn=get_ema_multi_avg_fn(0.5))
    trainer = SemiSupervisedTrainer(
        amp=False,  # float32 on every machine (precision auto: tests/test_precision.py)
        device="cpu", max_epochs=1, epoch_length=1, train_data_loader=labelled, unlabelled_data_loader=unlabelled,
        network=conv, optimizer=torch.optim.SGD(conv.parameters(), lr=0.0), loss_function=ce,
        terms={"mt": LossTerm(SoftmaxConsistencyLoss(), 1.0, ["unlabelled_logits", "teacher_logits"])},
        teacher=teacher, unlabelled_key="image_strong", teacher_key="image_weak", decollate=False,
    )
    trainer.run()
    assert float(trainer.state.output["loss_mt"]) > 0
    with pytest.raises(ValueError, match="two-branch network"):
        SemiSupervisedTrainer(
            amp=False,  # float32 on every machine (precision auto: tests/test_precision.py)
            device="cpu", max_epochs=1, train_data_loader=labelled, unlabelled_data_loader=unlabelled, network=conv,
            optimizer=torch.optim.SGD(conv.parameters(), lr=0.0), loss_function=ce,
            terms={"cps": LossTerm(CrossPseudoSupervisionLoss(), 1.0, ["logits", "logits_1"])},
        )
    with pytest.raises(ValueError, match="teacher"):
        SemiSupervisedTrainer(
            amp=False,  # float32 on every machine (precision auto: tests/test_precision.py)
            device="cpu", max_epochs=1, train_data_loader=labelled, unlabelled_data_loader=unlabelled, network=conv,
            optimizer=torch.optim.SGD(conv.parameters(), lr=0.0), loss_function=ce,
            terms={"mt": LossTerm(SoftmaxConsistencyLoss(), 1.0, ["unlabelled_logits", "teacher_logits"])},
        )
    with pytest.raises(ValueError, match="does not compute"):
        SemiSupervisedTrainer(
            amp=False,  # float32 on every machine (precision auto: tests/test_precision.py)
            device="cpu", max_epochs=1, train_data_loader=labelled, unlabelled_data_loader=unlabelled, network=conv,
            optimizer=torch.optim.SGD(conv.parameters(), lr=0.0), loss_function=ce,
            terms={"x": LossTerm(SoftmaxConsistencyLoss(), 1.0, ["target_logits_strong", "target_logits_weak"])},
        )
    with pytest.raises(ValueError, match="no unlabelled_data_loader"):
        make_trainer("cps", tiny_dualrel(), labelled, None)
    bad = make_trainer("cps", tiny_dualrel(), labelled, DataLoader(Slices(2, True), batch_size=2))
    with pytest.raises(KeyError, match="image_weak"):
        bad.run()


def test_single_branch_wrapper_is_branch_zero():
    net = tiny_dualrel().eval()
    x = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(DualRelSingleBranch(net, 1)(x), net.forward_branch(x, 1).log_probabilities)
    assert DualRelSingleBranch(net).network is net
    with pytest.raises(ValueError):
        DualRelSingleBranch(net, 2)
    with pytest.raises(TypeError):
        DualRelSingleBranch(nn.Conv2d(1, 2, 1))


# ----------------------------------------------------------------------------------------------- partitions


def test_partition_counts_match_the_papers_tables():
    assert [labelled_count(165, p) for p in ("1/32", "1/16", "1/8", "1/2")] == [5, 10, 20, 82]
    assert [labelled_count(400, p) for p in ("1/32", "1/16", "1/8", "1/2")] == [12, 25, 50, 200]
    assert [labelled_count(83, p) for p in ("1/32", "1/16", "1/8", "1/2")] == [2, 5, 10, 41]
    assert labelled_count(3, "1/32") == 1 and labelled_count(7, "full") == 7
    assert parse_partition(0.125) == parse_partition("1/8")
    for bad in ("1/0", "half", 0, 1.5, "-1/8"):
        with pytest.raises(ValueError):
            parse_partition(bad)


def test_partition_is_deterministic_disjoint_and_seeded():
    a, b, c = partition_slices(165, "1/8", 3), partition_slices(165, "1/8", 3), partition_slices(165, "1/8", 4)
    assert a == b and a.labelled != c.labelled
    assert len(a.labelled) == 20 and sorted(a.labelled + a.unlabelled) == list(range(165))
    assert list(a.labelled) == sorted(a.labelled)
    # the same draw numpy makes, so the slices are reproducible outside the package
    assert list(a.labelled) == sorted(np.random.default_rng(3).choice(165, 20, replace=False).tolist())
    assert a.as_dict() == {"partition": "1/8", "seed": 3, "num_labelled": 20, "num_unlabelled": 145,
                           "labelled_slices": list(a.labelled), "sampling": "random"}
    assert partition_slices(10, "full").unlabelled == ()
    # the default sampling is that random draw
    assert a == partition_slices(165, "1/8", 3, "random")


def test_contiguous_partition_is_one_seeded_block():
    starts = set()
    for seed in range(40):
        p = partition_slices(83, "1/8", seed, sampling="contiguous")
        start = p.labelled[0]
        # ten consecutive slices inside the stack, the rest unlabelled, and the draw reproducible
        assert p.labelled == tuple(range(start, start + 10)) and 0 <= start <= 73
        assert sorted(p.labelled + p.unlabelled) == list(range(83)) and len(p.unlabelled) == 73
        assert p == partition_slices(83, "1/8", seed, sampling="contiguous")
        assert p.sampling == "contiguous" and p.as_dict()["sampling"] == "contiguous"
        # the start is the seed's first uniform draw from 0 .. 73 (hand-written reference)
        assert start == int(np.random.default_rng(seed).integers(0, 74))
        starts.add(start)
    assert len(starts) > 20  # the seed moves the block
    # a block as long as the stack is the stack; one slice is a block of one
    assert partition_slices(7, "full", 2, sampling="contiguous").labelled == tuple(range(7))
    assert len(partition_slices(7, "1/32", 2, sampling="contiguous").labelled) == 1
    with pytest.raises(ValueError, match="sampling must be one of"):
        partition_slices(83, "1/8", 0, sampling="block")


def test_partition_split_probes_the_stack_depth(tmp_path):
    root = make_demo_data(tmp_path / "demo", num_slices=9, size=64)
    p = partition_split("lucchi_pp", root / "target", "train", "1/2", seed=1)
    assert len(p.labelled) == 4 and len(p.unlabelled) == 5
    assert p == partition_slices(9, "1/2", 1)
    q = partition_split("lucchi_pp", root / "target", "train", "1/2", seed=1, sampling="contiguous")
    assert q == partition_slices(9, "1/2", 1, "contiguous") and q.labelled == tuple(range(q.labelled[0], q.labelled[0] + 4))
