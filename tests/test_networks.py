"""Tests of mito_monai.networks.nets.MitoUNet."""

from __future__ import annotations

import pytest
import torch

from mito_monai.networks import MitoUNet as ReExported
from mito_monai.networks.nets import MitoUNet


def _expected_parameter_count(in_ch: int, out_ch: int, channels: tuple[int, ...]) -> int:
    """Closed-form count: 3x3 conv (+bias) and BatchNorm (weight, bias) per conv block, 2x2 deconvs, 1x1 head."""

    def conv_block(cin: int, cout: int) -> int:
        return 9 * cin * cout + cout + 2 * cout

    def two_conv(cin: int, cout: int) -> int:
        return conv_block(cin, cout) + conv_block(cout, cout)

    total = two_conv(in_ch, channels[0])
    for i in range(1, len(channels)):
        total += two_conv(channels[i - 1], channels[i])
    for i in range(len(channels) - 1, 0, -1):
        up = channels[i] // 2
        total += 4 * channels[i] * up + up  # ConvTranspose2d(k=2) weight + bias
        total += two_conv(channels[i - 1] + up, channels[i - 1])
    total += channels[0] * out_ch + out_ch
    return total


def test_reexport():
    assert ReExported is MitoUNet


@pytest.mark.parametrize(
    "channels,in_ch,out_ch,size",
    [
        ((4, 8), 1, 2, (6, 10)),
        ((4, 8, 16), 1, 2, (8, 12)),
        ((8, 16, 32, 64), 3, 5, (16, 24)),
        ((2, 3, 5), 1, 1, (8, 8)),
    ],
)
def test_output_and_feature_shapes(channels, in_ch, out_ch, size):
    net = MitoUNet(in_channels=in_ch, out_channels=out_ch, channels=channels)
    x = torch.randn(2, in_ch, *size)
    logits = net(x)
    assert logits.shape == (2, out_ch, *size)
    logits2, features = net(x, return_features=True)
    assert features.shape == (2, channels[0], *size)
    net.eval()
    with torch.no_grad():
        a = net(x)
        b, f = net(x, return_features=True)
        # the logits are the 1x1 head applied to the returned features
        assert torch.allclose(a, b)
        assert torch.allclose(net.head(f), a, atol=1e-6)


@pytest.mark.parametrize("upsample", ["deconv", "pixelshuffle", "nontrainable"])
def test_upsample_modes(upsample):
    net = MitoUNet(channels=(4, 8, 16), upsample=upsample)
    assert net(torch.randn(1, 1, 8, 16)).shape == (1, 2, 8, 16)


def test_three_dimensional():
    net = MitoUNet(spatial_dims=3, channels=(2, 4))
    logits, features = net(torch.randn(1, 1, 4, 6, 8), return_features=True)
    assert logits.shape == (1, 2, 4, 6, 8) and features.shape == (1, 2, 4, 6, 8)


def test_divisibility_error_suggests_padding():
    net = MitoUNet(channels=(4, 8, 16, 32))
    with pytest.raises(ValueError, match=r"divisible by 8.*pad"):
        net(torch.randn(1, 1, 20, 16))
    with pytest.raises(ValueError, match="input channel"):
        net(torch.randn(1, 2, 16, 16))
    with pytest.raises(ValueError, match="4D input"):
        net(torch.randn(1, 16, 16))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"spatial_dims": 1},
        {"in_channels": 0},
        {"out_channels": 1.5},
        {"channels": (8,)},
        {"channels": (8, 0)},
        {"dropout": 1.0},
        {"upsample": "bilinear"},
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        MitoUNet(**kwargs)
    with pytest.raises(TypeError):
        MitoUNet(channels=16)


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    net = MitoUNet(channels=(4, 8, 16))
    logits, features = net(torch.randn(2, 1, 16, 16), return_features=True)
    (logits.square().mean() + features.mean()).backward()
    for name, param in net.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    assert sum(float(p.grad.abs().sum()) for p in net.parameters()) > 0


def test_default_parameter_count():
    net = MitoUNet()
    count = sum(p.numel() for p in net.parameters())
    assert count == _expected_parameter_count(1, 2, (64, 128, 256, 512))
    assert 7.6e6 < count < 7.8e6  # the classic 4-stage U-Net with a 512-channel bottleneck
    assert net.feature_channels == 64 and net.divisor == 8


def test_small_config_parameter_count():
    net = MitoUNet(in_channels=2, out_channels=3, channels=(4, 8, 16))
    assert sum(p.numel() for p in net.parameters()) == _expected_parameter_count(2, 3, (4, 8, 16))


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_trace_and_script_match_eager():
    torch.manual_seed(0)
    net = MitoUNet(channels=(4, 8, 16)).eval()
    x = torch.randn(1, 1, 16, 16)  # what MONAI's bundle verify_net_in_out feeds: (1, in_channels, H, W)
    with torch.no_grad():
        expected = net(x)
        traced = torch.jit.trace(net, x)
        assert torch.allclose(traced(x), expected, atol=1e-6)
        scripted = torch.jit.script(net)
        assert torch.allclose(scripted(x), expected, atol=1e-6)
        logits, features = scripted(x, True)
        assert features.shape == (1, 4, 16, 16)
    with pytest.raises(Exception, match="divisible"):
        scripted(torch.randn(1, 1, 10, 16))


def test_torch_export_matches_eager():
    torch.manual_seed(0)
    net = MitoUNet(channels=(4, 8, 16)).eval()
    x = torch.randn(1, 1, 16, 16)
    exported = torch.export.export(net, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), net(x), atol=1e-6)


def test_networks_and_ops_import_no_higher_layer():
    """Data flows one way: ``ops`` (shared building blocks) imports no other layer; ``networks`` imports only
    ``ops`` (never ``losses``, ``engines`` or above)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "mito_monai"
    allowed = {"ops": {"ops"}, "networks": {"ops", "networks"}}
    for layer, ok in allowed.items():
        for path in (root / layer).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
                for name in names:
                    parts = name.split(".")
                    if parts[0] == "mito_monai":
                        assert len(parts) > 1 and parts[1] in ok, f"{path.relative_to(root)} imports {name}"
