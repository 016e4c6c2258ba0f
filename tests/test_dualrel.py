"""Tests of DualRel's components: ReferentialCrossAttention, DualRelNet and the L_rpc / L_div losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer
from monai.networks.nets.resnet import ResNet, get_inplanes

from mito_monai.losses import PrototypeDiversityLoss, ReliablePrototypeConsistencyLoss, select_agents
from mito_monai.networks.blocks import ReferentialCrossAttention
from mito_monai.networks.nets import DualRelNet, DualRelOutput


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------------------------------------------
# references written with plain python loops, straight from the paper's equations
# ----------------------------------------------------------------------------------------------------------------


def _matvec(weight: list[list[float]], x: list[float]) -> list[float]:
    """x W for nn.Linear's weight (out, in): y[o] = sum_d weight[o][d] x[d]."""
    return [sum(w_od * x_d for w_od, x_d in zip(row, x)) for row in weight]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _loop_attention(block, queries, tokens, reference_indices):
    """DualRel eq. 1-6 for one module, looping over batch, queries, tokens and references (no matrix products)."""
    wq, wk, wv = (m.weight.tolist() for m in (block.to_q, block.to_k, block.to_v))
    dim = queries.shape[2]
    scale = math.sqrt(dim)
    result = []
    for b in range(queries.shape[0]):
        f = queries[b].tolist()
        x = tokens[b].tolist()
        q = [_matvec(wq, f_k) for f_k in f]  # eq. 1
        k = [_matvec(wk, x_i) for x_i in x]
        v = [_matvec(wv, x_i) for x_i in x]
        per_query = []
        for kk in range(len(f)):
            s = _softmax([_dot(q[kk], k_i) / scale for k_i in k])  # eq. 2
            if reference_indices is None:
                c = [1.0] * len(x)
            else:
                ref_keys = [_matvec(wk, x[n]) for n in reference_indices[b]]
                s_fr = _softmax([_dot(q[kk], r) / scale for r in ref_keys])  # eq. 3
                c = []
                for x_i in x:
                    s_pr = _softmax([_dot(_matvec(wq, x_i), r) / scale for r in ref_keys])  # eq. 4
                    c.append(sum(a * p for a, p in zip(s_fr, s_pr)))  # eq. 5
            per_query.append([sum(c[i] * s[i] * v[i][ch] for i in range(len(x))) for ch in range(dim)])  # eq. 6
        result.append(per_query)
    return torch.tensor(result, dtype=torch.float64)


def _attention_inputs(seed: int = 0, batch: int = 2, num_queries: int = 3, num_tokens: int = 7, dim: int = 4):
    gen = torch.Generator().manual_seed(seed)
    queries = torch.randn(batch, num_queries, dim, generator=gen, dtype=torch.float64)
    tokens = torch.randn(batch, num_tokens, dim, generator=gen, dtype=torch.float64)
    return queries, tokens


# ----------------------------------------------------------------------------------------------------------------
# ReferentialCrossAttention
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy,num_references", [("orthogonal", 3), ("all", 1), ("orthogonal", 50)])
def test_referential_attention_matches_loop_equations(strategy, num_references):
    torch.manual_seed(0)
    block = ReferentialCrossAttention(4, num_references=num_references, reference_strategy=strategy).double().eval()
    queries, tokens = _attention_inputs()
    out, maps = block(queries, tokens, return_attention=True)

    # the references are select_agents' choice on the token sequence (never a second selection routine)
    expected_indices = select_agents(tokens.transpose(1, 2), num_references, strategy=strategy)[1]
    assert torch.equal(maps.reference_indices, expected_indices)
    assert maps.reference_indices.shape[1] == (7 if strategy == "all" else min(num_references, 7))

    expected = _loop_attention(block, queries, tokens, maps.reference_indices.tolist())
    torch.testing.assert_close(maps.aggregated, expected, rtol=1e-10, atol=1e-12)
    # documented composition: h = LN1(f + a), out = LN2(h + FFN(h))
    hidden = block.norm1(queries + expected)
    torch.testing.assert_close(out, block.norm2(hidden + block.ffn(hidden)), rtol=1e-10, atol=1e-12)
    # c is a dot product of two probability vectors: rectified weights are c * s with c in [0, 1]
    assert maps.correlation.min() >= 0 and maps.correlation.max() <= 1 + 1e-12
    torch.testing.assert_close(maps.weights, maps.correlation * maps.attention)
    assert torch.all(maps.weights.sum(-1) <= 1 + 1e-12)


def test_plain_cross_attention_without_references():
    torch.manual_seed(1)
    block = ReferentialCrossAttention(4, use_references=False).double().eval()
    queries, tokens = _attention_inputs(seed=3)
    out, maps = block(queries, tokens, return_attention=True)
    assert maps.correlation is None and maps.reference_indices is None
    # plain attention by hand: softmax(Q K^T / sqrt(C)) V
    q = queries @ block.to_q.weight.T
    k = tokens @ block.to_k.weight.T
    v = tokens @ block.to_v.weight.T
    by_hand = torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1) @ v
    torch.testing.assert_close(maps.aggregated, by_hand)
    torch.testing.assert_close(maps.aggregated, _loop_attention(block, queries, tokens, None))
    hidden = block.norm1(queries + by_hand)
    torch.testing.assert_close(out, block.norm2(hidden + block.ffn(hidden)))
    # the references change the result (the rectification is not a no-op)
    with_refs = ReferentialCrossAttention(4, num_references=3).double().eval()
    with_refs.load_state_dict(block.state_dict())
    _, ref_maps = with_refs(queries, tokens, return_attention=True)
    assert not torch.allclose(ref_maps.aggregated, maps.aggregated)


def test_referential_attention_gradients_and_validation():
    block = ReferentialCrossAttention(8, num_references=4)
    queries = torch.randn(2, 3, 8, requires_grad=True)
    tokens = torch.randn(2, 10, 8, requires_grad=True)
    out = block(queries, tokens)
    assert out.shape == (2, 3, 8)
    out.sum().backward()
    assert queries.grad.abs().sum() > 0 and tokens.grad.abs().sum() > 0
    assert block.to_k.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="C = dim = 8"):
        block(torch.randn(2, 3, 5), tokens)
    with pytest.raises(ValueError, match="batch size"):
        block(torch.randn(1, 3, 8), tokens)
    with pytest.raises(TypeError, match="floating"):
        block(torch.ones(2, 3, 8, dtype=torch.long), tokens)
    with pytest.raises(ValueError, match="reference_strategy"):
        ReferentialCrossAttention(8, reference_strategy="nearest")
    with pytest.raises(ValueError, match="num_references"):
        ReferentialCrossAttention(8, num_references=0)
    with pytest.raises(ValueError, match="dropout"):
        ReferentialCrossAttention(8, dropout=1.0)


# ----------------------------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------------------------


def test_reliable_prototype_consistency_hand_computed():
    pa = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[3.0, 4.0], [0.5, 0.0]]])
    pb = torch.tensor([[[3.0, 4.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    r = torch.tensor([[0.5, 1.0], [0.25, 0.8]])
    lam = 0.3
    dist = [[5.0, 0.0], [5.0, 0.5]]
    expected = [
        [math.exp(1 - 1 / r[b, k].item()) * dist[b][k] - lam * r[b, k].item() for k in range(2)] for b in range(2)
    ]
    none = ReliablePrototypeConsistencyLoss(reg_weight=lam, reduction="none")(pa, pb, r)
    torch.testing.assert_close(none, torch.tensor(expected))
    mean = ReliablePrototypeConsistencyLoss(reg_weight=lam)(pa, pb, r)
    assert mean.item() == pytest.approx(sum(map(sum, expected)) / 4, rel=1e-6)
    total = ReliablePrototypeConsistencyLoss(reg_weight=lam, reduction="sum")(pa, pb, r)
    assert total.item() == pytest.approx(sum(map(sum, expected)), rel=1e-6)
    # the default lambda is 1.0 (the paper gives no value)
    assert ReliablePrototypeConsistencyLoss().reg_weight == 1.0


def test_prototype_consistency_without_reliability():
    # Table 4's "w/o RPrS" row: the plain mean L2 distance, no weighting and no regulariser
    pa = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[3.0, 4.0], [0.5, 0.0]]])
    pb = torch.tensor([[[3.0, 4.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    loss_fn = ReliablePrototypeConsistencyLoss(reg_weight=0.3, use_reliability=False, reduction="none")
    torch.testing.assert_close(loss_fn(pa, pb), torch.tensor([[5.0, 0.0], [5.0, 0.5]]))
    assert ReliablePrototypeConsistencyLoss(use_reliability=False)(pa, pb).item() == pytest.approx(10.5 / 4)
    # at r = 1 and reg_weight 0 the weighted loss is the same distance
    weighted = ReliablePrototypeConsistencyLoss(reg_weight=0.0)(pa, pb, torch.ones(2, 2))
    assert weighted.item() == pytest.approx(10.5 / 4)
    with pytest.raises(ValueError, match="pass none"):
        ReliablePrototypeConsistencyLoss(use_reliability=False)(pa, pb, torch.ones(2, 2))
    with pytest.raises(TypeError, match="use_reliability"):
        ReliablePrototypeConsistencyLoss(use_reliability="no")


def test_reliability_gradient_direction():
    loss_fn = ReliablePrototypeConsistencyLoss(reg_weight=1.0)
    pa = torch.zeros(1, 2, 3)
    pb = torch.zeros(1, 2, 3)
    pb[0, 0, 0] = 0.05  # agreeing prototypes: ||d|| = 0.05
    pb[0, 1, 0] = 20.0  # strongly disagreeing prototypes: ||d|| = 20
    for value in (0.2, 0.5, 0.9):
        r = torch.full((1, 2), value, requires_grad=True)
        loss_fn(pa, pb, r).backward()
        assert r.grad[0, 0] < 0, "agreeing prototypes must push r up"
        assert r.grad[0, 1] > 0, "disagreeing prototypes must push r down"
        # analytic: dL/dr_k = (exp(1 - 1/r) d / r^2 - lambda) / (B K)
        for k, d in enumerate((0.05, 20.0)):
            analytic = (math.exp(1 - 1 / value) * d / value**2 - 1.0) / 2
            assert r.grad[0, k].item() == pytest.approx(analytic, rel=1e-5)


def test_reliable_prototype_consistency_validation():
    loss_fn = ReliablePrototypeConsistencyLoss()
    p = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        loss_fn(p, p, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        loss_fn(p, p, torch.full((2, 3), 1.5))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        loss_fn(p, p, torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match="reliability must have shape"):
        loss_fn(p, p, torch.ones(2, 4))
    with pytest.raises(ValueError, match="same shape"):
        loss_fn(p, torch.zeros(2, 3, 5), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"\(B, K, C\)"):
        loss_fn(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="reg_weight"):
        ReliablePrototypeConsistencyLoss(reg_weight=-1.0)
    assert loss_fn(p, p, torch.ones(2, 3)).item() == pytest.approx(-1.0)  # d = 0, r = 1: -lambda


def test_prototype_diversity():
    loss_fn = PrototypeDiversityLoss()
    k = 4
    orthogonal = (torch.eye(6)[:k] * torch.tensor([1.0, 2.0, 0.5, 3.0]).unsqueeze(1)).unsqueeze(0).repeat(2, 1, 1)
    assert loss_fn(orthogonal).item() == pytest.approx(0.0, abs=1e-6)
    identical = torch.randn(1, 6).expand(k, 6).unsqueeze(0) * torch.tensor([1.0, 2.0, 3.0, 0.1]).view(1, k, 1)
    assert loss_fn(identical).item() == pytest.approx(k * (k - 1), rel=1e-6)
    # hand-computed on random features, per image
    feats = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(2))
    expected = []
    for b in range(3):
        rows = feats[b].tolist()
        total = 0.0
        for i in range(5):
            for j in range(5):
                if i != j:
                    total += _dot(rows[i], rows[j]) / math.sqrt(_dot(rows[i], rows[i]) * _dot(rows[j], rows[j]))
        expected.append(total)
    torch.testing.assert_close(PrototypeDiversityLoss(reduction="none")(feats), torch.tensor(expected))
    assert loss_fn(feats).item() == pytest.approx(sum(expected) / 3, rel=1e-5)
    assert PrototypeDiversityLoss(reduction="sum")(feats).item() == pytest.approx(sum(expected), rel=1e-5)
    with pytest.raises(ValueError, match=r"\(B, K, C\)"):
        loss_fn(torch.randn(5, 7))


# ----------------------------------------------------------------------------------------------------------------
# DualRelNet
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet50_net():
    torch.manual_seed(0)
    return DualRelNet().eval()


def _small_net(**kwargs) -> DualRelNet:
    args = dict(encoder_depth=18, embed_dim=16, num_filters=4, num_references=3, decoder_channels=(32, 16, 16, 8, 8))
    args.update(kwargs)
    return DualRelNet(**args)


def test_dualrel_outputs_both_modes(resnet50_net):
    net = resnet50_net
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = net(x)
        single = net(x, branch=1)
    assert isinstance(out, DualRelOutput)
    assert out.reliability.shape == (2, 12)
    assert torch.all(out.reliability > 0) and torch.all(out.reliability <= 1)
    for b in out.branches:
        assert b.log_probabilities.shape == b.probabilities.shape == (2, 2, 64, 64)
        assert b.activations.shape == (2, 12, 64, 64)
        assert b.prototypes.shape == b.mito_features.shape == (2, 12, 64)
        assert b.embedding.shape == (2, 64, 64, 64)
        torch.testing.assert_close(b.probabilities.sum(1), torch.ones(2, 64, 64))
        assert torch.isfinite(b.log_probabilities).all()
        # documented merge: p_fg = sum(A_1..A_K/2) / sum(A_1..A_K), channel 1 = mitochondria
        fg, bg = b.activations[:, :6].sum(1), b.activations[:, 6:].sum(1)
        torch.testing.assert_close(b.probabilities[:, 1], fg / (fg + bg), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.probabilities, b.log_probabilities.exp())
        # activations are sigmoid(f~ . E), prototypes the pixel mean of A_k * E
        scores = torch.einsum("bkc,bchw->bkhw", b.mito_features, b.embedding)
        torch.testing.assert_close(b.activations, torch.sigmoid(scores))
        torch.testing.assert_close(b.prototypes, (b.activations.unsqueeze(2) * b.embedding.unsqueeze(1)).mean((3, 4)))
    # branch mode: the same branch's log-probabilities, usable as CE logits
    assert single.shape == (2, 2, 64, 64)
    torch.testing.assert_close(single, out.branches[1].log_probabilities)
    torch.testing.assert_close(torch.softmax(single, 1), out.branches[1].probabilities)
    labels = (torch.rand(2, 64, 64) > 0.5).long()
    nll = -torch.log(out.branches[1].probabilities.gather(1, labels.unsqueeze(1))).mean()
    assert F.cross_entropy(single, labels).item() == pytest.approx(nll.item(), rel=1e-5)
    # the two (independently initialised) branches predict differently
    assert not torch.allclose(out.branches[0].probabilities, out.branches[1].probabilities)


def test_dualrel_branches_differ_in_weights(resnet50_net):
    first, second = resnet50_net.branches
    assert not torch.equal(first.encoder.conv1.weight, second.encoder.conv1.weight)
    assert not torch.equal(first.encoder.layer4[0].conv2.weight, second.encoder.layer4[0].conv2.weight)
    assert not torch.equal(first.up_blocks[0].convs.conv_0.conv.weight, second.up_blocks[0].convs.conv_0.conv.weight)
    assert not torch.equal(first.mito_filters, second.mito_filters)
    assert not torch.equal(first.attention.to_q.weight, second.attention.to_q.weight)
    # MONAI's ResNet-50 is used, with the torchvision layout (stride 32, 2048 deep channels)
    assert isinstance(first.encoder, ResNet) and first.feature_channels == 2048


def test_dualrel_branch_seeds_and_gradients():
    torch.manual_seed(0)
    a = _small_net(branch_seeds=(1, 2))
    state = torch.random.get_rng_state()
    b = _small_net(branch_seeds=(1, 2))
    assert torch.equal(torch.random.get_rng_state(), state)  # seeding does not touch the global RNG
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.branches[0].encoder.conv1.weight, a.branches[1].encoder.conv1.weight)
    with pytest.raises(ValueError, match="must differ"):
        _small_net(branch_seeds=(3, 3))
    # gradients of every loss term reach both branches and the reliability head
    out = a(torch.randn(2, 1, 32, 32))
    labels = torch.randint(0, 2, (2, 32, 32))
    loss = (
        F.cross_entropy(out.branches[0].log_probabilities, labels)
        + F.cross_entropy(out.branches[1].log_probabilities, labels)
        + ReliablePrototypeConsistencyLoss()(out.branches[0].prototypes, out.branches[1].prototypes, out.reliability)
        + 0.05 * PrototypeDiversityLoss()(out.branches[0].mito_features)
    )
    loss.backward()
    for module in (a.branches[0], a.branches[1], a.reliability_head):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_dualrel_single_call_options():
    """forward(details=True) is the branch's whole output and forward(with_reliability=False) leaves the
    reliability head out of the graph (what a DDP-wrapped network needs: one forward call an iteration)."""
    net = _small_net(branch_seeds=(1, 2)).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        details = net(x, branch=1, details=True)
        reference = net.forward_branch(x, 1)
        both = net(x, with_reliability=False)
        full = net(x)
    torch.testing.assert_close(details.prototypes, reference.prototypes)
    torch.testing.assert_close(details.log_probabilities, net(x, branch=1))
    assert both.reliability is None and full.reliability.shape == (2, net.num_filters)
    torch.testing.assert_close(both.branches[0].log_probabilities, full.branches[0].log_probabilities)
    net.train()
    out = net(torch.randn(2, 1, 32, 32), with_reliability=False)
    (out.branches[0].log_probabilities.mean() + out.branches[1].log_probabilities.mean()).backward()
    assert all(p.grad is None for p in net.reliability_head.parameters())


def test_dualrel_bfloat16_autocast_channels_last():
    """The bundles' default: bfloat16 autocast with channels-last weights gives finite outputs and gradients
    close to float32 (log-probabilities within bfloat16's ~3 significant digits)."""
    net = _small_net(branch_seeds=(1, 2))
    fast = _small_net(branch_seeds=(1, 2)).to(memory_format=torch.channels_last)
    assert fast.branches[0].encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 1, 64, 64)
    ref = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x)
    for b in (0, 1):
        lp = out.branches[b].log_probabilities.float()
        assert torch.isfinite(lp).all()
        torch.testing.assert_close(lp.exp(), ref.branches[b].log_probabilities.exp(), atol=0.05, rtol=0)
    assert torch.isfinite(out.reliability).all()
    loss = sum(F.nll_loss(o.log_probabilities.float(), (x[:, 0] > 0.5).long()) for o in out.branches)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in fast.parameters() if p.grad is not None)


def test_dualrel_validation():
    net = _small_net().eval()
    with pytest.raises(ValueError, match="divisible by 32"):
        net(torch.zeros(1, 1, 48, 64))
    with pytest.raises(ValueError, match="divisible by 32"):
        net(torch.zeros(1, 1, 64, 40), branch=0)
    with pytest.raises(ValueError, match="input channel"):
        net(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="4D input"):
        net(torch.zeros(1, 64, 64))
    with pytest.raises(ValueError, match="branch must be"):
        net(torch.zeros(1, 1, 64, 64), branch=2)
    with pytest.raises(ValueError, match="even"):
        _small_net(num_filters=5)
    with pytest.raises(ValueError, match="exactly 2 classes"):
        _small_net(num_classes=3)
    with pytest.raises(ValueError, match="encoder_depth"):
        _small_net(encoder_depth=42)
    with pytest.raises(ValueError, match="decoder_channels"):
        _small_net(decoder_channels=(8, 8))


def test_dualrel_sliding_window_one_branch():
    net = _small_net().eval()
    x = torch.randn(1, 1, 96, 64)  # not divisible by 32: the 64 x 64 windows are
    inferer = SlidingWindowInferer(roi_size=(64, 64), sw_batch_size=2, overlap=0.5)
    with torch.no_grad():
        pred = inferer(x, net, branch=0)
        window = net(x[:, :, :64], branch=0)
    assert pred.shape == (1, 2, 96, 64)
    assert torch.isfinite(pred).all()
    # top rows are covered by the first window only (rows 0..31); constant blending weights keep its values
    torch.testing.assert_close(pred[:, :, :32], window[:, :, :32], rtol=1e-5, atol=1e-5)


def _torchvision_like_state(in_channels: int) -> dict[str, torch.Tensor]:
    """A ResNet-18 state dict with torchvision's names, e.g. as saved from an RGB ImageNet model (plus its fc)."""
    torch.manual_seed(7)
    reference = ResNet(
        "basic", [2, 2, 2, 2], get_inplanes(), spatial_dims=2, n_input_channels=in_channels, conv1_t_stride=2,
        shortcut_type="B", bias_downsample=False, num_classes=10,
    )  # fmt: skip
    state = reference.state_dict()
    # a trained model's BatchNorm statistics: non-trivial values (fresh ones are all 0 / 1 in both networks)
    g = torch.Generator().manual_seed(8)
    for key, value in state.items():
        if key.endswith("running_mean"):
            state[key] = torch.randn(value.shape, generator=g)
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=g) + 0.5
    return state


def test_dualrel_pretrained_loading(tmp_path, caplog):
    state = _torchvision_like_state(in_channels=3)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    with caplog.at_level("INFO", logger="mito_monai.networks.nets.dualrel"):
        net = _small_net(pretrained_path=str(path))
    report = net.pretrained_report
    assert "fc.weight" in report["unexpected"] and "fc.bias" in report["unexpected"]
    assert report["missing"] == [] and report["mismatched"] == []
    assert "conv1.weight" in report["loaded"] and "layer4.1.bn2.running_var" in report["loaded"]
    assert "loaded" in caplog.text
    for branch in net.branches:
        encoder_state = branch.encoder.state_dict()
        # the RGB stem is summed over its input channels for the 1-channel network
        torch.testing.assert_close(encoder_state["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
        torch.testing.assert_close(encoder_state["layer3.0.downsample.0.weight"], state["layer3.0.downsample.0.weight"])
        for key in ("layer2.1.bn1.running_mean", "layer4.1.bn2.running_var"):
            assert state[key].abs().sum() > 0 and not torch.all(state[key] == 1)
            torch.testing.assert_close(encoder_state[key], state[key])
    # decoders keep their own (different) initialisation
    assert not torch.equal(net.branches[0].embedding_head.weight, net.branches[1].embedding_head.weight)


def test_dualrel_pretrained_errors(tmp_path):
    unrelated = tmp_path / "unrelated.pt"
    torch.save({"head.weight": torch.zeros(3, 3), "blocks.0.attn.qkv.weight": torch.zeros(2)}, unrelated)
    with pytest.raises(ValueError, match="no tensor of .* fits the ResNet encoder"):
        _small_net(pretrained_path=unrelated)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        _small_net(pretrained_path=tmp_path / "missing.pth")
    # the right names but every shape wrong (a ResNet-50 file for a ResNet-18 encoder is caught the same way)
    wrong = tmp_path / "wrong_shapes.pt"
    torch.save({"layer1.0.conv1.weight": torch.zeros(1, 1, 1, 1)}, wrong)
    with pytest.raises(ValueError, match="shape mismatches"):
        _small_net(pretrained_path=wrong)
