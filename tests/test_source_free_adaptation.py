"""Source-free adaptation and the BatchNorm re-estimation on the target: options of DomainAdaptationTrainer.

- ``source_free=True``: the loss of a step is exactly the weighted target terms recomputed by hand from
  the teacher's weak-view logits and the network's strong-view logits (no supervised term), and the
  trainer refuses terms that read the source.
- ``bn_adaptation_batches=N``: before the first step the running statistics of every BatchNorm layer are
  the plain average of the per-batch statistics of the first N weak target batches (computed by hand
  with ``torch.var(unbiased=True)``, as BatchNorm does), and no weight changes.
- the bundle: a source-free run builds its training loader from the target alone (no source path is
  touched) and refuses to start from random weights.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from conftest import ToySlices, exception_messages, tiny_unet
from mito_monai.engines import DomainAdaptationTrainer, LossTerm
from mito_monai.losses import FeatureConsistencyLoss, PrototypePseudoLabelLoss, PseudoLabelConsistencyLoss
from mito_monai.networks.nets import MitoUNet

REPO = Path(__file__).resolve().parents[1]


def TargetViews(n: int = 4, seed: int = 0) -> ToySlices:
    """Fixed unlabelled target slices (shifted statistics): a weak view and a different strong view of each."""
    return ToySlices(n, labelled=False, seed=seed, size=16, low=0.3, scale=0.5, noise=0.3)


_net = tiny_unet


def _trainer(net, loader, terms, **kwargs) -> DomainAdaptationTrainer:
    return DomainAdaptationTrainer(
        amp=False,  # float32 on every machine (precision auto: tests/test_precision.py)
        device="cpu",
        max_epochs=1,
        epoch_length=kwargs.pop("epoch_length", 1),
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=kwargs.pop("lr", 0.0)),
        loss_function=nn.CrossEntropyLoss(),
        decollate=False,
        terms=terms,
        **kwargs,
    )


def _target_terms() -> dict[str, LossTerm]:
    return {
        "cf": LossTerm(FeatureConsistencyLoss(), weight=0.3, inputs=["target_features_strong", "target_features_weak"]),
        "reg": LossTerm(PseudoLabelConsistencyLoss(), weight=0.7, inputs=["target_logits_strong", "target_logits_weak"]),
    }


def test_source_free_step_is_the_target_terms_alone():
    loader = DataLoader(TargetViews(), batch_size=2, shuffle=False)
    net = _net()
    teacher = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    reference_net = copy.deepcopy(net)  # the teacher starts from these weights at the first step
    trainer = _trainer(net, loader, _target_terms(), source_free=True, teacher=teacher)
    seen = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.update(e.state.output))
    trainer.run()

    batch = next(iter(loader))
    weak, strong = batch["image_weak"], batch["image_strong"]
    ref_teacher = copy.deepcopy(reference_net)
    ref_teacher.train()  # weak_bn="train": the weak batch's own statistics
    with torch.no_grad():
        w_logits, w_feats = ref_teacher(weak, return_features=True)
    reference_net.train()
    s_logits, s_feats = reference_net(strong, return_features=True)
    cf = ((s_feats - w_feats) ** 2).mean()
    reg = nn.functional.cross_entropy(s_logits, w_logits.argmax(1))
    expected = 0.3 * cf + 0.7 * reg  # constant weights (no ramp-up), no supervised term
    assert "loss_sup" not in seen
    assert torch.allclose(seen["loss"], expected, atol=1e-5)
    # swapping the views gives another value: the test would catch views fed the wrong way round
    with torch.no_grad():
        swapped = 0.3 * ((w_feats - s_feats) ** 2).mean() + 0.7 * nn.functional.cross_entropy(w_logits, s_logits.argmax(1))
    assert not torch.allclose(seen["loss"], swapped, atol=1e-4)


def test_source_free_refuses_source_terms_and_needs_a_term():
    loader = DataLoader(TargetViews(), batch_size=2)
    pro = LossTerm(
        PrototypePseudoLabelLoss(),
        weight=0.1,
        inputs=["source_features", "source_labels", "target_features_weak", "target_features_strong", "target_pseudo_labels"],
    )
    with pytest.raises(ValueError, match=r"\['pro'\] read source data"):
        _trainer(_net(), loader, {**_target_terms(), "pro": pro}, source_free=True)
    with pytest.raises(ValueError, match="at least one active target term"):
        _trainer(_net(), loader, {}, source_free=True)


def _bn_inputs(net: nn.Module, x: torch.Tensor) -> dict[nn.Module, torch.Tensor]:
    """The input of every BatchNorm layer for the batch ``x`` (train mode, as the re-estimation runs)."""
    got: dict[nn.Module, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: got.__setitem__(mod, inp[0].detach()))
        for m in net.modules()
        if isinstance(m, nn.BatchNorm2d)
    ]
    net.train()
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return got


@pytest.mark.parametrize("n_batches", [1, 3])
def test_batchnorm_is_reestimated_on_the_target_before_the_first_step(n_batches):
    data = TargetViews(n=6)
    loader = DataLoader(data, batch_size=2, shuffle=False)
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    # the reference: the average over the first n_batches weak batches of each BN input's batch statistics
    probe = copy.deepcopy(net)
    per_batch = [_bn_inputs(probe, data.images[2 * i : 2 * i + 2]) for i in range(n_batches)]
    names = {m: n for n, m in probe.named_modules()}

    trainer = _trainer(net, loader, _target_terms(), target_data_loader=loader, bn_adaptation_batches=n_batches)
    trainer.state.device = torch.device("cpu")
    trainer.adapt_batchnorm()
    state = net.state_dict()
    for module in per_batch[0]:
        name = names[module]
        mean = torch.stack([b[module].mean(dim=(0, 2, 3)) for b in per_batch]).mean(0)
        var = torch.stack([b[module].transpose(0, 1).flatten(1).var(dim=1, unbiased=True) for b in per_batch]).mean(0)
        assert torch.allclose(state[f"{name}.running_mean"], mean, atol=1e-5), name
        assert torch.allclose(state[f"{name}.running_var"], var, atol=1e-4), name
        assert not torch.allclose(before[f"{name}.running_mean"], mean, atol=1e-3)  # it did move
    for key, value in before.items():  # weights untouched
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(state[key], value), key


def test_batchnorm_reestimation_runs_once_in_a_fresh_run():
    loader = DataLoader(TargetViews(n=4), batch_size=2, shuffle=False)
    net = _net()
    trainer = _trainer(net, loader, _target_terms(), source_free=True, bn_adaptation_batches=2, epoch_length=3)
    calls = []
    original = trainer.adapt_batchnorm
    trainer.adapt_batchnorm = lambda: calls.append(trainer.state.iteration) or original()
    trainer.run()
    assert calls == [1]
    with pytest.raises(ValueError, match="bn_adaptation_batches must be an integer"):
        _trainer(_net(), loader, _target_terms(), target_data_loader=loader, bn_adaptation_batches=-1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    from mito_monai.datasets import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo"), num_slices=3, size=128)


TINY = {
    "channels": [4, 8, 16, 32], "crop_size": [32, 32], "batch_size": 2, "epoch_length": 2, "num_iterations": 4,
    "val_interval": 1, "log_interval": 1, "infer_roi": [64, 64], "report": False, "selection": False,
}


def _train(tmp: Path, demo: Path, **overrides) -> dict:
    from monai.bundle import run

    configs = REPO / "bundles" / "r4mito" / "configs"
    args = {**TINY, "target_dir": str(demo / "target"), "ckpt_dir": str(tmp / "models"), "output_dir": f"$'{tmp / 'eval'}'"}
    run("training", config_file=str(configs / "train.json"), meta_file=str(configs / "metadata.json"),
        logging_file=False, **{**args, **overrides})
    return json.loads((tmp / "eval" / "final_metrics.json").read_text())


def test_bundle_source_free_run_reads_no_source_and_needs_a_source_model(tmp_path, demo):
    source_model = tmp_path / "source_model.pt"
    torch.save(MitoUNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16, 32)).state_dict(), source_model)
    no_source = tmp_path / "no_such_source"  # any read of the source would fail on this path
    final = _train(tmp_path / "run", demo, source_dir=str(no_source), source_free=True, method="baseline",
                   teacher="ema", bn_adaptation_batches=2, init_checkpoint=str(source_model))
    assert set(final["metrics"]) >= {"IoU", "mAP"}
    assert not no_source.exists()
    with pytest.raises(Exception) as no_model:
        _train(tmp_path / "run2", demo, source_dir=str(no_source), source_free=True, method="baseline",
               init_checkpoint="none")
    assert "source-free adaptation starts from a source model" in exception_messages(no_model.value)
    with pytest.raises(Exception) as source_term:
        _train(tmp_path / "run3", demo, source_dir=str(no_source), source_free=True, method="r4mito",
               init_checkpoint=str(source_model))
    assert "['pro'] read source data" in exception_messages(source_term.value)


def test_shipped_source_model_loads_weights_only_into_the_inference_network():
    """``models/source_vnc3.pt`` (trained on VNC III alone, the warm start of source-free adaptation) is
    shipped, is a plain state dict (``weights_only=True``) and fits ``network_def`` of inference.json exactly."""
    from monai.bundle import ConfigParser

    bundle = REPO / "bundles" / "r4mito"
    weights = bundle / "models" / "source_vnc3.pt"
    assert weights.is_file(), f"{weights} is not shipped"
    state = torch.load(weights, map_location="cpu", weights_only=True)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(state, strict=True)  # same keys and shapes
    network.eval()
    with torch.no_grad():
        out = network(torch.rand(1, 1, 64, 64))
    out = out[0] if isinstance(out, (tuple, list)) else out
    assert out.shape == (1, 2, 64, 64) and torch.isfinite(out).all()
