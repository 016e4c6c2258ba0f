"""Tests of the R4MITO loss terms in mito_monai.losses (docs/design.md section 3)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mito_monai.losses import (
    AgentRelationLoss,
    FeatureConsistencyLoss,
    PrototypePseudoLabelLoss,
    PseudoLabelConsistencyLoss,
    agent_correlation,
    agent_relations,
    class_prototypes,
    cosine_similarity_map,
    gather_agents,
    log_plackett_luce,
    plackett_luce,
    rank_consistency,
    select_agents,
)


def _corr(**kwargs):
    """L_corr alone: the first value of :class:`AgentRelationLoss`."""
    loss = AgentRelationLoss(**kwargs)

    def corr(strong, weak):
        return loss(strong, weak)[0]

    return corr


def _rank(**kwargs):
    """L_rank alone: the second value of :class:`AgentRelationLoss`."""
    loss = AgentRelationLoss(**kwargs)

    def rank(strong, weak):
        return loss(strong, weak)[1]

    return rank

# ----------------------------------------------------------------------------------------------------------------
# references written with plain python loops


def _pl_reference(scores: list[float]) -> list[float]:
    """Brute-force Plackett-Luce over itertools.permutations (eq. 12)."""
    out = []
    for perm in itertools.permutations(range(len(scores))):
        prob = 1.0
        for j in range(len(perm)):
            prob *= scores[perm[j]] / sum(scores[perm[t]] for t in range(j, len(perm)))
        out.append(prob)
    return out


def _greedy_orthogonal_reference(vectors: list[list[float]], k: int) -> list[int]:
    """The greedy most-orthogonal rule on a list of vectors: start at the largest norm, then min-max |cos|."""
    norms = [math.sqrt(sum(v * v for v in vec)) for vec in vectors]
    unit = [[v / n for v in vec] for vec, n in zip(vectors, norms)]
    chosen = [max(range(len(vectors)), key=lambda i: (norms[i], -i))]
    while len(chosen) < min(k, len(vectors)):
        best, best_score = None, None
        for i in range(len(vectors)):
            if i in chosen:
                continue
            score = max(abs(sum(a * b for a, b in zip(unit[i], unit[c]))) for c in chosen)
            if best_score is None or score < best_score:
                best, best_score = i, score
        chosen.append(best)
    return chosen


def _normalize(vec: list[float]) -> list[float]:
    n = math.sqrt(sum(v * v for v in vec))
    return [v / n for v in vec] if n > 0 else [0.0 for _ in vec]


def _pixels(features: torch.Tensor) -> list[list[list[float]]]:
    """(B, C, H, W) -> per image, the list of pixel vectors (row-major)."""
    return [features[b].flatten(1).t().tolist() for b in range(features.shape[0])]


def _prototype_loss_reference(fs, ys, ftw, fts, yt, tau, temperature, num_classes=2) -> float:
    """docs/design.md section 3.2 with loops: source protos, reliable target pixels, target protos (fallback), CE of cos / T."""
    src = [pix for img in _pixels(fs) for pix in img]
    src_lab = ys.flatten().tolist()
    proto_s = []
    for k in range(num_classes):
        members = [_normalize(p) for p, lab in zip(src, src_lab) if lab == k]
        mean = [sum(col) / len(members) for col in zip(*members)]
        proto_s.append(_normalize(mean))
    weak = [pix for img in _pixels(ftw) for pix in img]
    reliable = []
    for pix in weak:
        sims = [sum(a * b for a, b in zip(_normalize(pix), p)) for p in proto_s]
        best = max(range(num_classes), key=lambda k: sims[k])
        reliable.append(best if sims[best] > tau else -1)
    proto_t = []
    for k in range(num_classes):
        members = [_normalize(p) for p, lab in zip(weak, reliable) if lab == k]
        if members:
            proto_t.append(_normalize([sum(col) / len(members) for col in zip(*members)]))
        else:
            proto_t.append(proto_s[k])
    strong = [pix for img in _pixels(fts) for pix in img]
    total = 0.0
    for pix, lab in zip(strong, yt.flatten().tolist()):
        logits = [sum(a * b for a, b in zip(_normalize(pix), p)) / temperature for p in proto_t]
        total += math.log(sum(math.exp(v) for v in logits)) - logits[lab]
    return total / len(strong)


def _views(shape=(2, 8, 8, 8), noise=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weak = torch.randn(*shape, generator=gen)
    strong = weak + noise * torch.randn(*shape, generator=gen)
    return strong.requires_grad_(True), weak.requires_grad_(True)


# ----------------------------------------------------------------------------------------------------------------
# Plackett-Luce


@pytest.mark.parametrize("k", [3, 4])
def test_plackett_luce_matches_brute_force(k):
    gen = torch.Generator().manual_seed(k)
    scores = torch.rand(5, k, generator=gen, dtype=torch.float64) + 0.05
    probs = plackett_luce(scores)
    assert probs.shape == (5, math.factorial(k)) and probs.dtype == torch.float32
    for row in range(5):
        expected = torch.tensor(_pl_reference(scores[row].tolist()), dtype=torch.float32)
        assert torch.allclose(probs[row], expected, atol=1e-6)
    assert torch.allclose(probs.sum(-1), torch.ones(5), atol=1e-6)
    # log-space input gives the same distribution (only score ratios matter)
    assert torch.allclose(plackett_luce(scores.log() + 3.0, log_input=True), probs, atol=1e-6)


def test_plackett_luce_paper_worked_example():
    # eq. 13: P((a, b, c) | c) = c_a / (c_a + c_b + c_c) * c_b / (c_b + c_c) * c_c / c_c
    ca, cb, cc = 0.5, 0.3, 0.2
    probs = plackett_luce(torch.tensor([[ca, cb, cc]]))[0]
    order = list(itertools.permutations(range(3)))
    expected_abc = ca / (ca + cb + cc) * cb / (cb + cc) * cc / cc
    assert probs[order.index((0, 1, 2))].item() == pytest.approx(expected_abc, abs=1e-7)
    assert probs[order.index((2, 1, 0))].item() == pytest.approx(cc / 1.0 * cb / (cb + ca), abs=1e-7)
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_plackett_luce_per_pixel_batches_ties_and_underflow():
    scores = torch.softmax(torch.randn(2, 6, 5, 4), dim=-1)
    probs = plackett_luce(scores)
    assert probs.shape == (2, 6, 5, 24)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 6, 5), atol=1e-5)
    # tied scores: every ordering equally likely
    assert torch.allclose(plackett_luce(torch.full((3, 4), 0.25)), torch.full((3, 24), 1 / 24))
    # zero (underflowed) scores and extreme log-scores stay finite
    assert torch.isfinite(plackett_luce(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))).all()
    extreme = log_plackett_luce(torch.tensor([[0.0, -500.0, -1000.0, -2000.0]]), log_input=True)
    assert torch.isfinite(extreme).all() and extreme[0, 0].item() == pytest.approx(0.0, abs=1e-6)
    half = plackett_luce(torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.bfloat16))
    assert half.dtype == torch.float32 and torch.allclose(half.sum(-1), torch.ones(1), atol=1e-6)
    with pytest.raises(ValueError):
        plackett_luce(torch.rand(2, 9))


# ----------------------------------------------------------------------------------------------------------------
# agents


def test_orthogonal_selection_finds_planted_orthonormal_set():
    gen = torch.Generator().manual_seed(3)
    basis, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen))  # columns orthonormal
    planted = [2, 7, 11, 13]
    pixels = []
    for i in range(16):
        # dense mixtures: |cos| >= ~0.15 with every planted direction, norm below the planted ones
        coeff = 0.3 + 0.7 * torch.rand(4, generator=gen)
        pixels.append(basis @ coeff / (basis @ coeff).norm())
    for j, pos in enumerate(planted):
        pixels[pos] = basis[:, j] * (2.0 + j)
    feat = torch.stack(pixels, dim=1).reshape(1, 4, 4, 4)
    agents, indices = select_agents(feat, 4)
    assert sorted(indices[0].tolist()) == planted
    assert indices[0, 0].item() == 13  # the largest norm starts
    unit = F.normalize(agents[0], dim=1)
    assert torch.allclose(unit @ unit.t(), torch.eye(4), atol=1e-5)
    assert indices[0].tolist() == _greedy_orthogonal_reference(feat[0].flatten(1).t().tolist(), 4)


def test_orthogonal_selection_matches_greedy_reference():
    gen = torch.Generator().manual_seed(5)
    feat = torch.randn(3, 6, 5, 5, generator=gen)
    agents, indices = select_agents(feat, 7)
    assert indices.shape == (3, 7) and agents.shape == (3, 7, 6)
    for b in range(3):
        assert indices[b].tolist() == _greedy_orthogonal_reference(feat[b].flatten(1).t().tolist(), 7)
        assert torch.equal(agents[b], feat[b].flatten(1)[:, indices[b]].t())


def test_orthogonal_selection_takes_zero_vectors_last():
    feat = torch.randn(1, 3, 2, 3)
    feat[0, :, 0, 1] = 0.0  # e.g. a dead ReLU pixel
    _, indices = select_agents(feat, 6)
    assert indices[0, -1].item() == 1 and sorted(indices[0].tolist()) == list(range(6))


def test_random_and_all_strategies_and_small_maps():
    feat = torch.randn(2, 3, 4, 4)
    _, idx1 = select_agents(feat, 5, "random", generator=torch.Generator().manual_seed(1))
    _, idx2 = select_agents(feat, 5, "random", generator=torch.Generator().manual_seed(1))
    assert torch.equal(idx1, idx2) and all(len(set(row.tolist())) == 5 for row in idx1)
    agents, idx = select_agents(feat, 3, "all")
    assert torch.equal(idx, torch.arange(16).expand(2, 16)) and agents.shape == (2, 16, 3)
    for strategy in ("orthogonal", "random"):  # fewer pixels than agents -> every pixel is an agent
        agents, idx = select_agents(torch.randn(2, 3, 2, 2), 128, strategy)
        assert agents.shape == (2, 4, 3) and all(sorted(row.tolist()) == [0, 1, 2, 3] for row in idx)
    with pytest.raises(ValueError):
        select_agents(feat, 4, "kmeans")
    with pytest.raises(ValueError):
        select_agents(feat, 0)


def test_gather_and_correlation_match_manual():
    feat = torch.randn(2, 5, 3, 4)
    idx = torch.tensor([[0, 5, 11], [3, 3, 7]])
    agents = gather_agents(feat, idx)
    for b in range(2):
        for j in range(3):
            r, c = divmod(idx[b, j].item(), 4)
            assert torch.equal(agents[b, j], feat[b, :, r, c])
    corr = agent_correlation(feat, agents, temperature=2.0)
    flat = feat.flatten(2).transpose(1, 2)
    expected = torch.softmax(torch.einsum("bnc,bkc->bnk", flat, agents) / 2.0, dim=-1)
    assert corr.shape == (2, 12, 3) and torch.allclose(corr, expected, atol=1e-6)
    assert torch.allclose(agent_correlation(feat, agents, 2.0, log=True).exp(), expected, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# consistency losses: zero on identical views, positive otherwise, gradient only into the strong view


def _agent_losses():
    return [
        _corr(num_agents=6, pool_stride=2),
        _rank(num_agents=6, topk=4, pool_stride=2),
        _corr(num_agents=5, strategy="random", pool_stride=1),
        _rank(num_agents=80, topk=3, strategy="all", pool_stride=1),
    ]


@pytest.mark.parametrize("loss", [FeatureConsistencyLoss()] + _agent_losses(), ids=lambda x: getattr(x, "__name__", type(x).__name__))
def test_feature_consistency_terms(loss):
    strong, weak = _views()
    same = loss(weak.detach().clone().requires_grad_(True), weak)
    assert same.item() == 0.0
    value = loss(strong, weak)
    assert value.item() > 0
    value.backward()
    assert weak.grad is None
    assert strong.grad is not None and strong.grad.abs().sum() > 0 and torch.isfinite(strong.grad).all()


def test_feature_consistency_value():
    strong, weak = _views((1, 2, 3, 3))
    assert FeatureConsistencyLoss()(strong, weak).item() == pytest.approx(((strong - weak) ** 2).mean().item())
    assert FeatureConsistencyLoss("none")(strong, weak).shape == (1, 2, 3, 3)


def test_pseudo_label_consistency():
    gen = torch.Generator().manual_seed(0)
    strong = torch.randn(2, 2, 4, 4, generator=gen, requires_grad=True)
    weak = torch.randn(2, 2, 4, 4, generator=gen, requires_grad=True)
    loss = PseudoLabelConsistencyLoss()(strong, weak)
    # reference: per pixel -log softmax(strong)[argmax weak]
    target = weak.argmax(1)
    ref = -torch.log_softmax(strong, 1).gather(1, target.unsqueeze(1)).mean()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    loss.backward()
    assert weak.grad is None and strong.grad.abs().sum() > 0
    # identical views: -log of the max softmax (the argmax is its own pseudo-label)
    same = PseudoLabelConsistencyLoss(reduction="none")(weak.detach(), weak)
    assert torch.allclose(same, -torch.log_softmax(weak.detach(), 1).amax(1))
    # threshold masks low-confidence pixels (mean still over all pixels)
    conf = torch.softmax(weak.detach(), 1).amax(1)
    thr = float(conf.median())
    masked = PseudoLabelConsistencyLoss(threshold=thr, reduction="none")(strong, weak)
    full = PseudoLabelConsistencyLoss(reduction="none")(strong, weak)
    assert torch.allclose(masked, full * (conf >= thr))
    with pytest.raises(ValueError):
        PseudoLabelConsistencyLoss(threshold=1.5)


def test_agent_relation_loss_shares_one_selection_and_matches_separate_terms():
    strong, weak = _views((2, 6, 8, 8))
    corr, rank = AgentRelationLoss(num_agents=8, topk=4, pool_stride=2)(strong, weak)
    separate_corr = _corr(num_agents=8, topk=1, pool_stride=2)(strong, weak)  # L_corr does not depend on topk
    assert corr.item() == pytest.approx(separate_corr.item(), rel=1e-6)
    relations = agent_relations(strong, weak, num_agents=8, pool_stride=2)
    assert relations.log_corr_strong.shape == (2, 16, 8) and relations.spatial_shape == (4, 4)
    assert not relations.log_corr_weak.requires_grad
    per_pixel = rank_consistency(relations, 4, "none", False)
    assert per_pixel.shape == (2, 4, 4) and per_pixel.mean().item() == pytest.approx(rank.item(), rel=1e-6)


def test_agent_losses_match_manual_kl():
    strong, weak = _views((1, 3, 2, 3), noise=0.5, seed=4)
    _, idx = select_agents(weak.detach(), 3)
    c_w = agent_correlation(weak.detach(), gather_agents(weak.detach(), idx))[0]
    c_s = agent_correlation(strong.detach(), gather_agents(strong.detach(), idx))[0]
    kl_corr = sum((c_w[i] * (c_w[i].log() - c_s[i].log())).sum().item() for i in range(6)) / 6
    assert _corr(num_agents=3, pool_stride=1)(strong, weak).item() == pytest.approx(kl_corr, rel=1e-5)
    kl_rank = 0.0
    for i in range(6):
        top = sorted(range(3), key=lambda j: -c_w[i, j].item())[:2]
        p_w = _pl_reference([c_w[i, j].item() for j in top])
        p_s = _pl_reference([c_s[i, j].item() for j in top])
        kl_rank += sum(a * math.log(a / b) for a, b in zip(p_w, p_s))
    rank = _rank(num_agents=3, topk=2, pool_stride=1)(strong, weak)
    assert rank.item() == pytest.approx(kl_rank / 6, rel=1e-4)

    # entry_mean: the scale of torch.nn.KLDivLoss(reduction="mean") over (pixels, entries), as in RankMatch
    kl_div_mean = torch.nn.KLDivLoss(reduction="mean")(c_s.log(), c_w).item()
    corr_mean = _corr(num_agents=3, pool_stride=1, entry_mean=True)(strong, weak)
    assert corr_mean.item() == pytest.approx(kl_div_mean, rel=1e-5) and kl_div_mean == pytest.approx(kl_corr / 3, rel=1e-5)
    rank_mean = _rank(num_agents=3, topk=2, pool_stride=1, entry_mean=True)(strong, weak)
    assert rank_mean.item() == pytest.approx(kl_rank / 6 / 2, rel=1e-4)  # 2! orderings
    both = AgentRelationLoss(3, topk=2, pool_stride=1, entry_mean=True)(strong, weak)
    assert both[0].item() == pytest.approx(corr_mean.item()) and both[1].item() == pytest.approx(rank_mean.item())


# ----------------------------------------------------------------------------------------------------------------
# prototypes


def test_class_prototypes_and_cosine_map():
    feat = torch.tensor([[[[3.0, 0.0], [1.0, 0.0]], [[4.0, 2.0], [0.0, 5.0]]]])  # (1, 2, 2, 2)
    labels = torch.tensor([[[1, 0], [1, -1]]])
    protos, counts = class_prototypes(feat, labels, 2)
    assert counts.tolist() == [1.0, 2.0]
    assert torch.allclose(protos[0], torch.tensor([0.0, 1.0]))
    mean1 = torch.tensor([(0.6 + 1.0) / 2, (0.8 + 0.0) / 2])
    assert torch.allclose(protos[1], mean1 / mean1.norm())
    sim = cosine_similarity_map(feat, protos)
    assert sim.shape == (1, 2, 2, 2)
    assert sim[0, 0, 0, 0].item() == pytest.approx(0.8) and sim[0, 1, 1, 0].item() == pytest.approx(float(protos[1, 0]))
    # labels at another resolution are resized with nearest neighbour
    up = labels.repeat_interleave(2, -1).repeat_interleave(2, -2).unsqueeze(1)
    assert torch.allclose(class_prototypes(feat, up, 2)[0], protos)


@pytest.mark.parametrize("tau,temperature", [(0.7, 1.0), (0.2, 0.5), (0.999, 1.0)])
def test_prototype_loss_matches_loop_reference(tau, temperature):
    gen = torch.Generator().manual_seed(11)
    fs = torch.randn(2, 3, 3, 3, generator=gen)
    ys = (torch.rand(2, 1, 3, 3, generator=gen) > 0.5).long()
    ys[0, 0, 0, 0], ys[0, 0, 0, 1] = 0, 1
    ftw = torch.randn(1, 3, 4, 4, generator=gen)
    # make a few target pixels copies of source pixels, so some are reliable at tau = 0.7
    ftw[0, :, 0, 0] = fs[0, :, 0, 0]
    ftw[0, :, 1, 1] = fs[0, :, 0, 1]
    fts = ftw + 0.2 * torch.randn(1, 3, 4, 4, generator=gen)
    yt = torch.randint(0, 2, (1, 4, 4), generator=gen)
    loss = PrototypePseudoLabelLoss(tau=tau, temperature=temperature)(fs, ys, ftw, fts, yt)
    expected = _prototype_loss_reference(fs, ys, ftw, fts, yt, tau, temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_prototype_loss_gradient_and_pseudo_labels_from_logits():
    gen = torch.Generator().manual_seed(2)
    fs = torch.randn(2, 4, 4, 4, generator=gen, requires_grad=True)
    ys = torch.randint(0, 2, (2, 1, 4, 4), generator=gen)
    ftw = torch.randn(2, 4, 4, 4, generator=gen, requires_grad=True)
    fts = (ftw.detach() + 0.1 * torch.randn(2, 4, 4, 4, generator=gen)).requires_grad_(True)
    logits = torch.randn(2, 2, 4, 4, generator=gen)
    loss_fn = PrototypePseudoLabelLoss(tau=0.0)
    loss = loss_fn(fs, ys, ftw, fts, logits)
    assert loss.item() == pytest.approx(loss_fn(fs, ys, ftw, fts, logits.argmax(1, keepdim=True)).item())
    loss.backward()
    assert fs.grad is None and ftw.grad is None
    assert fts.grad is not None and fts.grad.abs().sum() > 0
    assert loss_fn.__class__(reduction="none")(fs, ys, ftw, fts, logits.argmax(1)).shape == (2, 4, 4)


def test_prototype_loss_without_reliable_target_pixels_uses_source_prototypes():
    gen = torch.Generator().manual_seed(8)
    fs, ftw = torch.randn(1, 3, 4, 4, generator=gen), torch.randn(1, 3, 4, 4, generator=gen)
    ys = torch.randint(0, 2, (1, 4, 4), generator=gen)
    ys[0, 0, :2] = torch.tensor([0, 1])
    yt = torch.randint(0, 2, (1, 4, 4), generator=gen)
    fts = ftw.clone().requires_grad_(True)
    loss = PrototypePseudoLabelLoss(tau=0.9999)(fs, ys, ftw, fts, yt)
    protos, _ = class_prototypes(fs, ys, 2)
    expected = F.cross_entropy(cosine_similarity_map(fts.detach(), protos), yt)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(fts.grad).all()


def test_prototype_loss_without_source_foreground_is_finite():
    fs = torch.randn(1, 3, 4, 4, requires_grad=True)
    ys = torch.zeros(1, 1, 4, 4, dtype=torch.long)  # no mitochondria in the source batch
    ftw = torch.randn(1, 3, 4, 4)
    fts = torch.randn(1, 3, 4, 4, requires_grad=True)
    yt = torch.randint(0, 2, (1, 4, 4))
    loss = PrototypePseudoLabelLoss(tau=-1.0)(fs, ys, ftw, fts, yt)
    # only the background class is defined: background pixels have a one-class softmax (loss 0), the rest ignored
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(fts.grad).all()
    # no valid class at all (every source label ignored): exact zero, still differentiable
    fts.grad = None
    empty = PrototypePseudoLabelLoss()(fs, torch.full((1, 4, 4), -1), ftw, fts, yt)
    assert empty.item() == 0.0
    empty.backward()
    assert torch.isfinite(fts.grad).all()


def test_prototype_ema_memory():
    gen = torch.Generator().manual_seed(4)
    loss_fn = PrototypePseudoLabelLoss(ema=0.9)
    fs1 = torch.randn(1, 3, 2, 2, generator=gen)
    y1 = torch.tensor([[[0, 1], [1, 0]]])
    ftw = torch.randn(1, 3, 2, 2, generator=gen)
    yt = torch.tensor([[[0, 1], [1, 1]]])
    loss_fn(fs1, y1, ftw, ftw, yt)
    p1, _ = class_prototypes(fs1, y1, 2)
    assert torch.allclose(loss_fn.prototype_memory, p1) and loss_fn.prototype_seen.all()
    # second batch without foreground: background is blended, foreground kept from memory
    fs2 = torch.randn(1, 3, 2, 2, generator=gen)
    y2 = torch.zeros(1, 2, 2, dtype=torch.long)
    value = loss_fn(fs2, y2, ftw, ftw.clone().requires_grad_(True), yt)
    p2, _ = class_prototypes(fs2, y2, 2)
    assert torch.allclose(loss_fn.prototype_memory[0], F.normalize(0.9 * p1[0] + 0.1 * p2[0], dim=0), atol=1e-6)
    assert torch.allclose(loss_fn.prototype_memory[1], p1[1])
    assert torch.isfinite(value) and value.item() > 0  # foreground pixels are not ignored thanks to the memory
    restored = PrototypePseudoLabelLoss(ema=0.9)
    restored.load_state_dict(loss_fn.state_dict())
    assert torch.equal(restored.prototype_memory, loss_fn.prototype_memory)


# ----------------------------------------------------------------------------------------------------------------
# edge cases: constant features, tiny maps, reduced precision


def _all_terms(strong, weak, fs, ys, yt, logits_s, logits_w):
    corr, rank = AgentRelationLoss(num_agents=128, topk=4, pool_stride=2)(strong, weak)
    return [
        FeatureConsistencyLoss()(strong, weak),
        PseudoLabelConsistencyLoss()(logits_s, logits_w),
        PrototypePseudoLabelLoss()(fs, ys, weak, strong, yt),
        _corr(num_agents=128, pool_stride=1)(strong, weak),
        _rank(num_agents=3, topk=4, pool_stride=4)(strong, weak),
        corr,
        rank,
    ]


@pytest.mark.parametrize("case", ["constant", "tiny", "relu_dead"])
def test_edge_cases_are_finite(case):
    gen = torch.Generator().manual_seed(1)
    if case == "constant":  # tied scores everywhere
        weak = torch.ones(2, 4, 4, 4)
        strong = torch.full((2, 4, 4, 4), 2.0)
    elif case == "tiny":  # 2x2 map: fewer pixels than agents, a single pooled pixel at stride 2
        weak = torch.randn(1, 4, 2, 2, generator=gen)
        strong = weak + torch.randn(1, 4, 2, 2, generator=gen)
    else:  # large magnitudes and all-zero pixels (underflowing softmax, zero vectors)
        weak = torch.relu(30 * torch.randn(2, 4, 4, 4, generator=gen))
        strong = torch.relu(30 * torch.randn(2, 4, 4, 4, generator=gen))
    strong.requires_grad_(True)
    fs = torch.randn(weak.shape[0], 4, 4, 4, generator=gen, requires_grad=True)
    ys = torch.zeros(weak.shape[0], 1, 4, 4, dtype=torch.long)
    logits_w = torch.randn(weak.shape[0], 2, *weak.shape[2:], generator=gen)
    logits_s = logits_w.clone().requires_grad_(True)
    yt = logits_w.argmax(1)
    terms = _all_terms(strong, weak, fs, ys, yt, logits_s, logits_w)
    assert all(torch.isfinite(t) for t in terms)
    sum(terms).backward()
    assert torch.isfinite(strong.grad).all() and torch.isfinite(logits_s.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_reduced_precision(dtype):
    gen = torch.Generator().manual_seed(6)
    net = torch.nn.Conv2d(1, 8, 3, padding=1)
    x_w, x_s = torch.randn(2, 1, 8, 8, generator=gen), torch.randn(2, 1, 8, 8, generator=gen)
    ys = torch.randint(0, 2, (2, 1, 8, 8), generator=gen)
    try:
        with torch.autocast("cpu", dtype=dtype):
            probe = net(x_w)
    except RuntimeError as err:  # pragma: no cover - depends on the CPU build
        pytest.skip(f"CPU autocast with {dtype} unavailable: {err}")
    if probe.dtype != dtype:
        pytest.skip(f"CPU autocast does not run conv in {dtype}")
    with torch.autocast("cpu", dtype=dtype):
        weak, strong, src = net(x_w), net(x_s), net(x_w * 0.5)
        logits_w, logits_s = weak[:, :2], strong[:, :2]
        terms = _all_terms(strong, weak, src, ys, logits_w.argmax(1), logits_s, logits_w)
    assert all(t.dtype == torch.float32 and torch.isfinite(t) for t in terms)
    sum(terms).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    # the reduced-precision inputs give nearly the float32 values (the loss maths itself is float32)
    ref = AgentRelationLoss(num_agents=128, topk=4, pool_stride=2)(strong.float().detach(), weak.float().detach())
    assert torch.allclose(torch.stack(terms[5:]).detach(), torch.stack(ref), rtol=1e-5, atol=1e-6)


def test_agent_losses_with_normalized_features_are_scale_invariant():
    from mito_monai.losses import AgentRelationLoss

    g = torch.Generator().manual_seed(3)
    strong = torch.rand(2, 6, 4, 4, generator=g)
    weak = torch.rand(2, 6, 4, 4, generator=g)
    # strategy "all": no greedy selection whose tie-breaks between unit-norm pixels depend on rounding
    cosine = AgentRelationLoss(num_agents=16, topk=3, strategy="all", pool_stride=1, temperature=0.2, normalize=True)
    raw = AgentRelationLoss(num_agents=16, topk=3, strategy="all", pool_stride=1, temperature=0.2)
    for a, b in zip(cosine(strong, weak), cosine(3.0 * strong, 3.0 * weak)):
        assert torch.allclose(a, b, atol=1e-5)
    # raw dot products are not: scaling the features changes the correlations and so the losses
    assert not torch.allclose(raw(strong, weak)[0], raw(3.0 * strong, 3.0 * weak)[0], atol=1e-3)
    # identical views still give exactly zero
    assert all(float(v) == 0.0 for v in cosine(weak, weak))


def test_pooled_agent_losses_equal_the_unpooled_losses_of_pooled_maps():
    """pool_stride > 1 averages both views' maps over stride x stride blocks before the agent step: the
    losses equal those of pool_stride=1 on the average-pooled maps (values, not only shapes)."""
    strong, weak = _views((2, 8, 8, 8))
    for stride in (2, 4):
        pooled = AgentRelationLoss(num_agents=6, topk=3, pool_stride=stride)(strong, weak)
        reference = AgentRelationLoss(num_agents=6, topk=3, pool_stride=1)(
            F.avg_pool2d(strong, stride), F.avg_pool2d(weak, stride)
        )
        for got, want in zip(pooled, reference):
            assert got.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-8)
        assert pooled[0].item() != pytest.approx(AgentRelationLoss(6, 3, pool_stride=1)(strong, weak)[0].item(), rel=1e-3)
