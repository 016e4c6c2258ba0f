"""Warm start (init_from_checkpoint), the EMA teacher option of DomainAdaptationTrainer, weak-pass BatchNorm,
and label-free model selection."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Events
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset

from conftest import TinyNet, ToySlices
from mito_monai.engines import DomainAdaptationTrainer, LossTerm
from mito_monai.handlers import AtomicCheckpointSaver, LabelFreeSelection, resume_training
from mito_monai.runtime import init_from_checkpoint
from mito_monai.losses import FeatureConsistencyLoss, PseudoLabelConsistencyLoss
from mito_monai.metrics import LabelFreeScores, binary_entropy, mask_agreement


def BNNet() -> TinyNet:
    return TinyNet(batch_norm=True)


def Views(n: int, target: bool = False, seed: int = 0) -> ToySlices:
    """Labelled source slices, or unlabelled target slices with two views (the target never has labels)."""
    return ToySlices(
        n, not target, seed, low=0.5 if target else 0.0, strong=lambda x, noise: x.flip(-1) * 0.9, with_image=True
    )


def _terms() -> dict:
    return {
        "cf": LossTerm(FeatureConsistencyLoss(), 0.5, ["target_features_strong", "target_features_weak"], 2),
        "reg": LossTerm(PseudoLabelConsistencyLoss(), 0.5, ["target_logits_strong", "target_logits_weak"], 2),
    }


def _trainer(net, teacher=None, lr=1e-2, epochs=1, epoch_length=2, handlers=None, weak_bn="train"):
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    return DomainAdaptationTrainer(
        device="cpu",
        max_epochs=epochs,
        epoch_length=epoch_length,
        train_data_loader=DataLoader(Views(4), batch_size=2),
        target_data_loader=DataLoader(Views(4, target=True), batch_size=2),
        network=net,
        optimizer=opt,
        loss_function=lambda logits, y: nn.functional.cross_entropy(logits, y[:, 0]),
        terms=_terms(),
        teacher=teacher,
        weak_bn=weak_bn,
        train_handlers=handlers,
        amp=False,
    )


def _params(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


# ---------------------------------------------------------------- warm start


def test_warm_start_with_zero_learning_rate_keeps_the_checkpoint_weights(tmp_path):
    torch.manual_seed(1)
    source = BNNet()
    torch.save(source.state_dict(), tmp_path / "model.pt")
    torch.manual_seed(2)
    net = init_from_checkpoint(BNNet(), tmp_path / "model.pt")
    _trainer(net, lr=0.0, weak_bn="eval").run()
    for key, value in source.state_dict().items():
        if "running" in key or "num_batches" in key:
            continue  # BatchNorm statistics move with the data, not with the learning rate
        assert torch.equal(net.state_dict()[key], value), key


def test_warm_start_reads_a_training_checkpoint_and_names_a_misfit(tmp_path):
    torch.manual_seed(1)
    source = BNNet()
    torch.save({"model": source.state_dict(), "optimizer": {}}, tmp_path / "ckpt.pt")
    net = init_from_checkpoint(BNNet(), tmp_path / "ckpt.pt")
    assert torch.equal(net.head.weight, source.head.weight)
    other = nn.Sequential(nn.Conv2d(1, 3, 3))
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt does not fit the network TinyNet.*missing"):
        init_from_checkpoint(BNNet(), tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt is not a readable PyTorch checkpoint"):
        init_from_checkpoint(BNNet(), tmp_path / "junk.pt")
    assert init_from_checkpoint(net, "") is net  # no warm start


# ---------------------------------------------------------------- EMA teacher


def test_ema_teacher_equals_its_formula_after_two_steps():
    torch.manual_seed(0)
    net = BNNet()
    decay = 0.9
    teacher = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    theta0 = _params(net)
    after = []
    trainer = _trainer(net, teacher=teacher, epoch_length=2)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: after.append(_params(net)))
    trainer.run()
    theta1, theta2 = after
    for key, t2 in theta2.items():
        if not t2.is_floating_point():
            continue
        # the teacher starts from the network's weights, then t <- d t + (1 - d) theta after each step
        expected = decay * (decay * theta0[key] + (1 - decay) * theta1[key]) + (1 - decay) * t2
        assert torch.allclose(teacher.module.state_dict()[key], expected, atol=1e-6), key
    assert not torch.allclose(teacher.module.head.weight, net.head.weight)


def test_weak_view_comes_from_the_teacher():
    torch.manual_seed(0)
    net = BNNet()
    teacher = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.99), use_buffers=True)
    seen = {}
    trainer = _trainer(net, teacher=teacher, epoch_length=1, weak_bn="eval")
    original = trainer._forward

    def spy(images, features, model=None):
        seen.setdefault("models", []).append(model)
        return original(images, features, model)

    trainer._forward = spy
    trainer.run()
    assert seen["models"][1] is teacher and seen["models"][0] is None and seen["models"][2] is None


def test_weak_bn_eval_leaves_running_statistics_to_the_labelled_and_strong_passes():
    torch.manual_seed(0)
    net_train, net_eval = BNNet(), BNNet()
    net_eval.load_state_dict(net_train.state_dict())
    _trainer(net_train, lr=0.0, epoch_length=1, weak_bn="train").run()
    _trainer(net_eval, lr=0.0, epoch_length=1, weak_bn="eval").run()
    # train mode: three BatchNorm updates a step (labelled, weak, strong); eval mode: two
    assert int(net_train.norm.num_batches_tracked) == 3
    assert int(net_eval.norm.num_batches_tracked) == 2
    assert net_eval.training and net_train.training


def test_resume_restores_the_teacher(tmp_path):
    torch.manual_seed(0)
    net = BNNet()
    teacher = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    opt_holder = {}
    trainer = _trainer(net, teacher=teacher, epochs=1)
    opt_holder["opt"] = trainer.optimizer
    saver = AtomicCheckpointSaver(tmp_path, {"model": net, "optimizer": trainer.optimizer, "teacher": teacher})
    saver.attach(trainer)
    trainer.run()
    saved_teacher = _params(teacher)

    torch.manual_seed(5)
    net2 = BNNet()
    teacher2 = AveragedModel(net2, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    trainer2 = _trainer(net2, teacher=teacher2, epochs=1)
    resume_training(trainer2, tmp_path, {"model": net2, "optimizer": trainer2.optimizer, "teacher": teacher2})
    trainer2.run()  # already at max_epochs: loads and stops
    for key, value in saved_teacher.items():
        assert torch.equal(teacher2.state_dict()[key], value), key
    assert int(teacher2.n_averaged) == int(teacher.n_averaged) == 3


def test_teacher_must_be_an_averaged_model():
    with pytest.raises(TypeError, match="update_parameters"):
        _trainer(BNNet(), teacher=nn.Linear(1, 1))
    with pytest.raises(ValueError, match="weak_bn"):
        _trainer(BNNet(), weak_bn="frozen")


# ---------------------------------------------------------------- label-free scores and selection


def test_label_free_scores_against_hand_computed_values():
    p = torch.tensor([[[[0.9, 0.2], [0.6, 0.1]]]])
    q = torch.tensor([[[[0.8, 0.7], [0.4, 0.0]]]])
    # masks: p -> {(0,0), (1,0)}, q -> {(0,0), (0,1)}: Dice = 2 * 1 / (2 + 2)
    assert mask_agreement(p, q) == (2.0, 4.0)
    h = [-(v * torch.log(torch.tensor(v)) + (1 - v) * torch.log(torch.tensor(1 - v))) for v in (0.9, 0.2, 0.6, 0.1)]
    scores = LabelFreeScores()
    scores.update(p, q)
    out = scores.compute()
    assert out["agreement"] == pytest.approx(0.5)
    assert out["entropy"] == pytest.approx(float(sum(h) / 4), rel=1e-5)
    assert out["foreground_fraction"] == pytest.approx(0.5)
    assert torch.allclose(binary_entropy(p).flatten(), torch.stack(h).float(), atol=1e-5)
    empty = LabelFreeScores()
    empty.update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    assert empty.compute()["agreement"] == 0.0  # a collapsed model is never "stable"
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        mask_agreement(torch.zeros(2, 2), torch.zeros(2, 2))


class Unlabelled(Dataset):
    """Target images only: any attempt to read a label fails the test."""

    def __init__(self) -> None:
        self.images = Views(4, target=True).images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i]}


class FakeEvaluator:
    """Stands in for the test-stack evaluator: its 'IoU' is a function of the network's head weights."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.runs = 0
        self.state = type("S", (), {"epoch": 0, "metrics": {}})()

    def run(self, epoch):
        self.runs += 1
        self.state.epoch = epoch
        self.state.metrics = {"IoU": float(self.net.head.weight.sum())}


def test_selection_keeps_the_best_check_and_reports_its_test_metrics(tmp_path):
    torch.manual_seed(0)
    net = BNNet()
    evaluator = FakeEvaluator(net)
    out = tmp_path / "final_metrics.json"
    out.write_text(json.dumps({"metrics": {"IoU": -1.0}}))
    selection = LabelFreeSelection(
        net, DataLoader(Unlabelled(), batch_size=2), evaluator=evaluator, criterion="entropy",
        output_path=out, save_path=tmp_path / "selected_model.pt", hindsight=True,
    )
    trainer = _trainer(net, epochs=3, epoch_length=2, handlers=[selection])
    snapshots = {}
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: snapshots.__setitem__(e.state.iteration, _params(net)))
    final = {}
    trainer.add_event_handler(Events.COMPLETED, lambda e: final.update(_params(net)))
    trainer.run()
    history = selection.history
    assert [r["iteration"] for r in history] == [2, 4, 6]
    best = min(history, key=lambda r: r["entropy"])
    record = json.loads(out.read_text())
    assert record["metrics"] == {"IoU": -1.0}  # the final model's figures are kept
    block = record["selection"]
    assert block["iteration"] == best["iteration"] and block["criterion"] == "entropy"
    # the selected model's test metrics are those of the weights at that iteration
    assert block["metrics"]["IoU"] == pytest.approx(float(snapshots[best["iteration"]]["head.weight"].sum()))
    saved = torch.load(tmp_path / "selected_model.pt", weights_only=True)
    assert torch.equal(saved["head.weight"], snapshots[best["iteration"]]["head.weight"])
    # the network ends with its final weights, not the selected ones
    assert torch.equal(net.head.weight, final["head.weight"])
    top = max(history, key=lambda r: r["test"]["IoU"])
    assert block["best_in_hindsight"] == {"iteration": top["iteration"], "IoU": top["test"]["IoU"]}


@pytest.mark.parametrize("start, chosen", [(0, 2), (3, 4), (5, 6), (7, 6)])
def test_selection_ignores_checks_before_its_start(start, chosen):
    torch.manual_seed(0)
    net = BNNet()
    selection = LabelFreeSelection(net, DataLoader(Unlabelled(), batch_size=2), criterion="entropy", start_iteration=start)
    scripted = iter([0.1, 0.2, 0.3])  # entropy at iterations 2, 4, 6: the earliest check looks best
    selection.scores = lambda device: {"entropy": next(scripted), "agreement": 0.0, "foreground_fraction": 0.0}
    snapshots = {}
    trainer = _trainer(net, epochs=3, epoch_length=2, handlers=[selection])
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: snapshots.__setitem__(e.state.iteration, _params(net)))
    trainer.run()
    history = selection.history
    assert [r["iteration"] for r in history] == [2, 4, 6]  # every check is recorded
    # candidates: the checks at or after the start, and always the final model
    assert [r["candidate"] for r in history] == [i >= start or i == 6 for i in (2, 4, 6)]
    assert selection.selection["iteration"] == chosen
    assert torch.equal(selection._best_state["head.weight"], snapshots[chosen]["head.weight"])
    with pytest.raises(ValueError, match="start_iteration"):
        LabelFreeSelection(net, [], start_iteration=-1)


def test_selection_scores_match_a_direct_computation():
    torch.manual_seed(0)
    net = BNNet().eval()
    selection = LabelFreeSelection(net, DataLoader(Unlabelled(), batch_size=4), noise_std=0.0, amp=False)
    scores = selection.scores("cpu")
    x = Unlabelled().images
    with torch.no_grad():
        p = torch.softmax(net(x), 1)[:, 1:2]
        q = torch.softmax(net(x.flip(-2, -1)), 1)[:, 1:2].flip(-2, -1)
    a, b = p >= 0.5, q >= 0.5
    expected = 2 * float((a & b).sum()) / float(a.sum() + b.sum()) if (a.sum() + b.sum()) > 0 else 0.0
    assert scores["agreement"] == pytest.approx(expected)
    assert scores["entropy"] == pytest.approx(float(binary_entropy(p).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="criterion"):
        LabelFreeSelection(net, [], criterion="IoU")


# ---------------------------------------------------------------- autocast inference on CPU


def test_autocast_inferer_runs_bfloat16_on_cpu_and_returns_float32():
    from monai.inferers import SlidingWindowInferer

    from mito_monai.inference import AutocastInferer

    seen = []

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return self.conv(x)

    net = Probe()
    x = torch.rand(1, 1, 20, 24)
    window = SlidingWindowInferer(roi_size=(16, 16))
    out = AutocastInferer(window, enabled=True, dtype="bfloat16")(x, net)
    assert out.dtype == torch.float32 and out.shape == (1, 2, 20, 24)
    assert seen and all(enabled and dtype == torch.bfloat16 for enabled, dtype in seen)
    with torch.no_grad():
        ref = window(x, net)  # the same windows in float32
    assert 0 < (out - ref).abs().max() < 0.02  # bfloat16 rounding only
    seen.clear()
    plain = AutocastInferer(None, enabled=False)(x, net)
    assert not seen[0][0] and torch.allclose(plain, net.conv(x))
    with pytest.raises(ValueError, match="dtype"):
        AutocastInferer(None, dtype="bfloat17")
