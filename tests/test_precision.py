"""Precision ``auto``: chosen by the hardware (mito_monai.runtime.precision), forced by amp true/false, used by the
trainer, the autocast inferer and the stack segmenter, and recorded."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from mito_monai.runtime import precision as prec
from mito_monai.runtime import resolve_precision


@pytest.fixture
def avx2_cpu(monkeypatch):
    """A CPU without native bfloat16 (AVX2 only), whatever this machine has."""
    monkeypatch.setattr(prec, "cpu_native_bf16", lambda: None)


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU with AVX-512 BF16, whatever this machine has."""
    monkeypatch.setattr(prec, "cpu_native_bf16", lambda: "avx512_bf16")


def _choice(p):
    return p.amp, p.dtype, p.channels_last, p.grad_scaler


def test_auto_follows_the_hardware(avx2_cpu, monkeypatch):
    assert _choice(resolve_precision(device="cpu")) == (False, torch.float32, False, False)
    monkeypatch.setattr(prec, "cpu_native_bf16", lambda: "amx_bf16")
    p = resolve_precision(device="cpu")
    assert _choice(p) == (True, torch.bfloat16, True, False) and "amx_bf16" in p.reason
    monkeypatch.setattr(prec, "_cuda_bf16", lambda device: True)
    assert _choice(resolve_precision(device="cuda")) == (True, torch.bfloat16, True, False)
    monkeypatch.setattr(prec, "_cuda_bf16", lambda device: False)  # e.g. a T4 or V100: float16 needs a scaler
    assert _choice(resolve_precision(device="cuda")) == (True, torch.float16, True, True)
    assert _choice(resolve_precision(device="mps")) == (False, torch.float32, False, False)


def test_amp_true_or_false_forces_it(avx2_cpu, bf16_cpu):
    assert _choice(resolve_precision(amp="true", device="cpu")) == (True, torch.bfloat16, True, False)
    assert _choice(resolve_precision(amp=False, device="cpu")) == (False, torch.float32, False, False)
    forced = resolve_precision(amp=True, amp_dtype="float16", channels_last="false", device="cpu")
    assert _choice(forced) == (True, torch.float16, False, False) and forced.reason.startswith("forced")
    assert _choice(resolve_precision(amp_dtype="float32", device="cpu")) == (False, torch.float32, False, False)
    for bad in ({"amp": "sometimes"}, {"amp_dtype": "bfloat17"}, {"channels_last": 2}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            resolve_precision(device="cpu", **bad)


def test_this_machines_detection_agrees_with_torch():
    caps = getattr(torch.cpu, "get_capabilities", lambda: {})()
    native = caps.get("amx_bf16", False) or caps.get("avx512_bf16", False)
    if not caps:
        pytest.skip("this torch has no torch.cpu.get_capabilities")
    assert (prec.cpu_native_bf16() is not None) == bool(native)
    assert resolve_precision(device="cpu").amp == bool(native)


def test_the_choice_is_logged_once_and_recorded(bf16_cpu, caplog, monkeypatch):
    monkeypatch.setattr(prec, "_LOGGED", set())
    with caplog.at_level(logging.INFO, logger="mito_monai"):
        first = resolve_precision(device="cpu")
        resolve_precision(device="cpu")
    assert [r.getMessage() for r in caplog.records] == [f"precision: {first}"]
    record = first.as_dict()
    assert record["dtype"] == "bfloat16" and record["amp"] is True and record["channels_last"] is True
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


class _Probe(nn.Module):
    """Records whether autocast is on, and its dtype, at each forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, x):
        self.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return self.conv(x)


@pytest.mark.parametrize("native", [False, True])
def test_inferer_and_segmenter_use_the_auto_choice(monkeypatch, native):
    import numpy as np

    from mito_monai.inference import AutocastInferer, StackSegmenter

    monkeypatch.setattr(prec, "cpu_native_bf16", lambda: "avx512_bf16" if native else None)
    net = _Probe()
    AutocastInferer(None)(torch.rand(1, 1, 16, 16), net)
    assert net.seen[-1] == ((True, torch.bfloat16) if native else (False, net.seen[-1][1]))
    seg = StackSegmenter(net, roi_size=(16, 16))
    seg.predict_slice(np.random.default_rng(0).random((16, 16)).astype(np.float32))
    enabled, dtype = net.seen[-1]
    assert enabled == native and seg.predictor.channels_last == native and (dtype == torch.bfloat16 or not native)
    assert seg.predictor.fingerprint()["precision"] == ("bfloat16 autocast channels-last" if native else "float32")


@pytest.mark.parametrize("native", [False, True])
def test_trainer_autocasts_only_where_auto_says(monkeypatch, native):
    from mito_monai.engines import DomainAdaptationTrainer

    monkeypatch.setattr(prec, "cpu_native_bf16", lambda: "avx512_bf16" if native else None)
    net = _Probe()
    data = [{"image": torch.rand(1, 1, 8, 8), "label": torch.randint(0, 2, (1, 1, 8, 8))}]
    trainer = DomainAdaptationTrainer(
        device="cpu", max_epochs=1, train_data_loader=data, network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=lambda y, t: y.float().mean(),
    )
    assert trainer.amp == native and trainer.precision.dtype == (torch.bfloat16 if native else torch.float32)
    trainer.run()
    assert net.seen and all(enabled == native for enabled, _ in net.seen)
    forced = DomainAdaptationTrainer(
        device="cpu", max_epochs=1, train_data_loader=data, network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=lambda y, t: y.float().mean(), amp=not native,
    )
    assert forced.amp == (not native)
