"""DomainAdaptationTrainer, loss terms, ramp-ups, atomic checkpoints and resume."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events
from torch import nn
from torch.utils.data import DataLoader, Dataset

from conftest import TinyNet, ToySlices
from mito_monai.engines import (
    DomainAdaptationTrainer,
    LossTerm,
    cycle,
    method_terms,
    num_epochs,
    sigmoid_rampup,
    supervised_domain,
)
from mito_monai.handlers import AtomicCheckpointSaver, resume_training
from mito_monai.runtime import atomic_torch_save, latest_checkpoint, load_checkpoint


Slices = ToySlices


class FlippedSlices(ToySlices):
    """ToySlices whose every item is flipped vertically with probability 0.5, drawn from torch's global generator
    (as MONAI's random transforms in a loader without workers); every draw is recorded in ``flips``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.flips: list[bool] = []

    def __getitem__(self, i):
        self.flips.append(bool(torch.rand(()) < 0.5))
        item = super().__getitem__(i)
        return {k: v.flip(-2) if self.flips[-1] else v for k, v in item.items()}


class CountingLoader:
    """Wraps a DataLoader and counts how often it was iterated over."""

    def __init__(self, loader) -> None:
        self.loader = loader
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        return iter(self.loader)


class Recorder(nn.Module):
    """A loss that records what it received and returns mean squared difference."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    def forward(self, strong, weak):
        self.calls.append((strong.requires_grad, weak.requires_grad, strong.shape))
        return ((strong - weak) ** 2).mean()


def _trainer(terms=None, target=None, epochs=1, epoch_length=3, handlers=None, net=None, shuffle=False):
    torch.manual_seed(0)
    net = net or TinyNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    src = DataLoader(Slices(4), batch_size=2, shuffle=shuffle)
    return DomainAdaptationTrainer(
        device="cpu",
        max_epochs=epochs,
        epoch_length=epoch_length,
        train_data_loader=src,
        network=net,
        optimizer=opt,
        loss_function=lambda logits, y: nn.functional.cross_entropy(logits, y[:, 0]),
        target_data_loader=target,
        terms=terms,
        train_handlers=handlers,
        amp=False,  # float32 on every machine (precision "auto" is tested in test_precision.py)
    )


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 0) == 1.0
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(100, 100) == 1.0 and sigmoid_rampup(10**6, 100) == 1.0
    with pytest.raises(ValueError, match="rampup_iterations"):
        sigmoid_rampup(1, -1)


def test_methods():
    assert method_terms("NoAdapt") == () and method_terms("oracle") == ()
    assert method_terms("baseline") == ("cf", "reg")
    assert set(method_terms("r4mito")) == {"cf", "reg", "pro", "corr", "rank"}
    assert supervised_domain("oracle") == "target" and supervised_domain("r4mito") == "source"
    with pytest.raises(ValueError, match="unknown method 'cafa'.*baseline"):
        method_terms("cafa")


def test_loss_term_validation_and_weight():
    term = LossTerm(Recorder(), weight=0.5, inputs=["target_features_strong", "target_features_weak"], rampup_iterations=10)
    assert term.weight_at(10) == pytest.approx(0.5) and term.weight_at(0) == pytest.approx(0.5 * math.exp(-5))
    assert not LossTerm(Recorder(), 0.0, ["target_logits_strong"]).active
    assert not LossTerm(Recorder(), 1.0, ["target_logits_strong"], enabled=False).active
    with pytest.raises(ValueError, match="unknown loss-term inputs"):
        LossTerm(Recorder(), 1.0, ["features"])
    with pytest.raises(ValueError, match="weight must be >= 0"):
        LossTerm(Recorder(), -1.0, ["target_logits_strong"])


def test_cycle_reiterates_without_caching():
    loader = CountingLoader([1, 2])
    it = cycle(loader)
    assert [next(it) for _ in range(5)] == [1, 2, 1, 2, 1]
    assert loader.passes == 3
    with pytest.raises(ValueError, match="yields no batch"):
        next(cycle([]))


def test_source_only_never_touches_target():
    class Boom:
        def __iter__(self):
            raise AssertionError("target loader must not be used by a source-only run")

    rec = Recorder()
    off = LossTerm(rec, 0.0, ["target_features_strong", "target_features_weak"])
    trainer = _trainer(terms={"cf": off}, target=Boom())
    trainer.run()
    out = trainer.state.output[0]  # decollated (MONAI's default): one dict per batch item
    assert trainer.state.iteration == 3 and rec.calls == []
    assert out["loss"] == pytest.approx(out["loss_sup"]) and "loss_cf" not in out


def test_active_term_total_gradients_and_cycling():
    rec = Recorder()
    term = LossTerm(rec, 0.25, ["target_features_strong", "target_features_weak"])
    target = CountingLoader(DataLoader(Slices(2, labelled=False, seed=1), batch_size=2))
    trainer = _trainer(terms={"cf": term}, target=target, epoch_length=5)
    trainer.run()
    out = trainer.state.output[0]  # decollated (MONAI's default): one dict per batch item
    assert len(rec.calls) == 5 and target.passes == 5  # one batch per pass: re-iterated every step
    # strong view carries gradient, weak view does not
    assert all(s and not w for s, w, _ in rec.calls)
    assert rec.calls[0][2] == (2, 4, 8, 8)
    assert out["loss"] == pytest.approx(out["loss_sup"] + 0.25 * out["loss_cf"])
    assert out["weight_cf"] == 0.25


def test_missing_target_loader_is_an_error():
    term = LossTerm(Recorder(), 1.0, ["target_features_strong", "target_features_weak"])
    with pytest.raises(ValueError, match="no target_data_loader"):
        _trainer(terms={"cf": term}, target=None)


def test_missing_view_key_is_explained():
    class Unpaired(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"image": torch.rand(1, 8, 8)}

    term = LossTerm(Recorder(), 1.0, ["target_features_strong", "target_features_weak"])
    trainer = _trainer(terms={"cf": term}, target=DataLoader(Unpaired(), batch_size=2))
    with pytest.raises(KeyError, match="WeakStrongViewsd"):
        trainer.run()


def _shuffled_run(epochs: int, ckpt_dir=None, resume_from=None, extra=None):
    """A trainer with shuffled source and target loaders, a random flip of every target item (drawn from torch's
    global generator) and a feature-consistency term with an active ramp-up; optionally saving to / resuming
    from a folder."""
    term = LossTerm(Recorder(), 0.5, ["target_features_strong", "target_features_weak"], rampup_iterations=4)
    target = DataLoader(FlippedSlices(6, labelled=False, seed=1), batch_size=2, shuffle=True)
    trainer = _trainer(terms={"cf": term}, target=target, epochs=epochs, epoch_length=2, shuffle=True)
    objects = {"model": trainer.network, "optimizer": trainer.optimizer, **(extra or {})}
    if ckpt_dir is not None:
        AtomicCheckpointSaver(ckpt_dir, objects).attach(trainer)
    if resume_from is not None:
        resume_training(trainer, resume_from, objects)
    return trainer


def test_atomic_checkpoint_resume_matches_uninterrupted(tmp_path):
    full = _shuffled_run(epochs=3)
    full.run()
    reference = {k: v.clone() for k, v in full.network.state_dict().items()}
    full_flips = full.second_data_loader.dataset.flips
    assert len(full_flips) == 12 and 0 < sum(full_flips) < 12  # the flips were drawn, and both ways

    # interrupted after epoch 1 (the configured run is 3 epochs), then resumed in a fresh set-up
    first = _shuffled_run(epochs=3, ckpt_dir=tmp_path)
    first.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda e: e.terminate())
    first.run()
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.endswith("checkpoint_iteration=2.pt")
    assert not list(tmp_path.glob("*.tmp"))
    assert {"model", "optimizer", "trainer", "random_state", "loss_terms"} == set(load_checkpoint(ckpt))

    torch.manual_seed(123)  # whatever the new process drew before, the resumed run continues the old one
    second = _shuffled_run(epochs=3, resume_from=tmp_path)
    second.run()
    assert second.state.iteration == 6
    # the resumed run drew the uninterrupted run's flips for epochs 2 and 3 (the random state was restored)
    assert first.second_data_loader.dataset.flips + second.second_data_loader.dataset.flips == full_flips
    for k, v in second.network.state_dict().items():
        assert torch.allclose(v, reference[k], atol=1e-6), k


def test_resume_refuses_objects_it_cannot_restore(tmp_path):
    teacher = torch.optim.swa_utils.AveragedModel(TinyNet())
    first = _shuffled_run(epochs=1, ckpt_dir=tmp_path, extra={"teacher": teacher})
    first.run()
    assert "teacher" in load_checkpoint(latest_checkpoint(tmp_path))
    # the EMA teacher was saved; a resume that does not restore it would silently reset it
    second = _shuffled_run(epochs=2, resume_from=tmp_path)
    with pytest.raises(ValueError, match=r"holds \['teacher'\], which this run has nothing to load into"):
        second.run()
    # a checkpoint that lacks an object to restore is named too
    third = _shuffled_run(epochs=2, resume_from=tmp_path, extra={"teacher": teacher, "scheduler": teacher})
    with pytest.raises(ValueError, match=r"lacks \['scheduler'\]"):
        third.run()


def test_resume_keeps_the_checkpoint_rampup(tmp_path):
    term = LossTerm(Recorder(), 1.0, ["target_features_strong"], rampup_iterations=10)
    state = term.state_dict()
    longer = LossTerm(Recorder(), 1.0, ["target_features_strong"], rampup_iterations=20)  # num_iterations doubled
    longer.load_state_dict(state)
    assert longer.rampup_iterations == 10 and longer.weight_at(5) == pytest.approx(term.weight_at(5))


def test_num_epochs_refuses_a_remainder():
    assert num_epochs(300, 100) == 3 and num_epochs(5, 5) == 1
    with pytest.raises(ValueError, match="num_iterations=350 is not a multiple of epoch_length=100.*300 or 400"):
        num_epochs(350, 100)
    with pytest.raises(ValueError, match="num_iterations=50 is not a multiple of epoch_length=100.*=100,"):
        num_epochs(50, 100)
    with pytest.raises(ValueError, match="epoch_length must be a positive integer"):
        num_epochs(100, 0)


def test_bundle_refuses_iterations_that_do_not_divide_into_epochs():
    from pathlib import Path

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(Path(__file__).resolve().parents[1] / "bundles/r4mito/configs/train.json"))
    parser.update({"num_iterations": 250, "epoch_length": 100})
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("max_epochs")
    chain = [err.value]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    assert any("num_iterations=250 is not a multiple of epoch_length=100" in str(e) for e in chain)


def test_atomic_save_failure_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_iteration=1.pt"
    atomic_torch_save({"w": torch.ones(2)}, path)
    previous = path.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"w": torch.zeros(2)}, path)
    assert path.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left behind
    monkeypatch.undo()

    # a failing rename (the last step) leaves the previous file and no temporary file either
    monkeypatch.setattr("os.replace", lambda *a: (_ for _ in ()).throw(OSError("rename failed")))
    with pytest.raises(OSError, match="rename failed"):
        atomic_torch_save({"w": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == previous and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(2))


def test_atomic_save_fsyncs_the_directory_after_the_rename(tmp_path, monkeypatch):
    import os

    events = []
    real_replace, real_fsync, real_open = os.replace, os.fsync, os.open
    opened = {}

    def record_open(p, flags, *args, **kwargs):
        fd = real_open(p, flags, *args, **kwargs)
        opened[fd] = str(p)
        return fd

    monkeypatch.setattr(os, "open", record_open)
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(opened[fd]), real_fsync(fd))[1])
    atomic_torch_save({"w": torch.ones(1)}, tmp_path / "a.pt")
    # the temporary file is fsynced, renamed, then its directory is fsynced
    assert len(events) == 3 and events[0].endswith(".tmp") and events[1:] == ["replace", str(tmp_path)]


def test_final_model_is_not_overwritten_silently(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"previous weights")
    trainer = _trainer(epochs=1)
    AtomicCheckpointSaver(tmp_path, {}, save_interval=0, final_model=trainer.network, final_path=tmp_path / "model.pt").attach(trainer)
    trainer.run()
    backups = [p for p in tmp_path.glob("model_*.pt")]
    assert len(backups) == 1 and backups[0].read_bytes() == b"previous weights"
    state = load_checkpoint(tmp_path / "model.pt")
    assert set(state) == set(trainer.network.state_dict())


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt is not a readable PyTorch checkpoint"):
        load_checkpoint(bad)


def test_terms_sharing_a_loss_module_call_it_once_per_iteration():
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, strong, weak):
            self.calls += 1
            d = (strong - weak) ** 2
            return d.mean(), 2 * d.mean()

    pair = Pair()
    inputs = ["target_features_strong", "target_features_weak"]
    terms = {"a": LossTerm(pair, 1.0, inputs, output=0), "b": LossTerm(pair, 0.5, inputs, output=1)}
    trainer = _trainer(terms=terms, target=DataLoader(Slices(2, labelled=False), batch_size=2), epoch_length=3)
    trainer.run()
    out = trainer.state.output[0]  # decollated (MONAI's default): one dict per batch item
    assert pair.calls == 3
    assert out["loss_b"] == pytest.approx(2 * out["loss_a"])
    assert out["loss"] == pytest.approx(out["loss_sup"] + out["loss_a"] + 0.5 * out["loss_b"])
    with pytest.raises(ValueError, match="output must be None or an index"):
        LossTerm(pair, 1.0, inputs, output=-1)


def test_enabled_parses_command_line_strings():
    # `--use_rank false` reaches the config as the string "false", which is truthy in Python
    inputs = ["target_logits_strong"]
    assert not LossTerm(Recorder(), 1.0, inputs, enabled="false").active
    assert not LossTerm(Recorder(), 1.0, inputs, enabled="No").active
    assert LossTerm(Recorder(), 1.0, inputs, enabled="True").active
    with pytest.raises(ValueError, match="enabled"):
        LossTerm(Recorder(), 1.0, inputs, enabled="sometimes")
    with pytest.raises(TypeError, match="enabled"):
        LossTerm(Recorder(), 1.0, inputs, enabled=[True])


def test_bundle_switches_accept_lowercase_strings():
    from pathlib import Path

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(Path(__file__).resolve().parents[1] / "bundles/r4mito/configs/train.json"))
    parser.update({"use_rank": "false", "use_pro": "true", "method": "baseline"})
    terms = parser.get_parsed_content("terms")
    assert not terms["rank"].active and terms["pro"].active and terms["cf"].active and not terms["corr"].active
