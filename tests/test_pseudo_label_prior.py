"""The class prior of the pseudo-label term: at least a fraction q of a batch's pixels are foreground.

References are computed by hand: a sort of the foreground probabilities, and a label fraction counted
with numpy on a generated split.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mito_monai.datasets import foreground_prior, label_foreground_fraction, make_demo_data
from mito_monai.losses import PseudoLabelConsistencyLoss
from mito_monai.losses.consistency import prior_threshold


def _logits_with_foreground(p: torch.Tensor) -> torch.Tensor:
    """2-class logits whose softmax foreground probability is ``p`` (B, H, W) -> (B, 2, H, W)."""
    p = p.clamp(1e-4, 1 - 1e-4)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1)


def test_prior_marks_the_most_probable_pixels_when_argmax_gives_too_few():
    g = torch.Generator().manual_seed(0)
    p = 0.45 * torch.rand(2, 8, 8, generator=g)  # every pixel below 0.5: argmax says all background
    strong = torch.randn(2, 2, 8, 8, generator=g)
    q = 0.1
    loss = PseudoLabelConsistencyLoss(min_foreground_fraction=q, reduction="none")(strong, _logits_with_foreground(p))
    # reference: the round(q * N) most probable pixels are foreground, by a full sort
    k = round(q * p.numel())
    order = torch.argsort(p.reshape(-1), descending=True)
    pseudo = torch.zeros(p.numel(), dtype=torch.long)
    pseudo[order[:k]] = 1
    expected = F.cross_entropy(strong, pseudo.reshape(2, 8, 8), reduction="none")
    assert torch.allclose(loss, expected, atol=1e-5)
    plain = PseudoLabelConsistencyLoss(reduction="none")(strong, _logits_with_foreground(p))
    assert torch.allclose(plain, F.cross_entropy(strong, torch.zeros(2, 8, 8, dtype=torch.long), reduction="none"))


def test_prior_keeps_the_argmax_when_it_already_gives_enough_foreground():
    g = torch.Generator().manual_seed(1)
    p = torch.rand(1, 16, 16, generator=g)  # about half the pixels above 0.5
    strong = torch.randn(1, 2, 16, 16, generator=g)
    with_prior = PseudoLabelConsistencyLoss(min_foreground_fraction=0.05)(strong, _logits_with_foreground(p))
    plain = PseudoLabelConsistencyLoss()(strong, _logits_with_foreground(p))
    assert torch.allclose(with_prior, plain)
    assert float(prior_threshold(p, 0.05)) == pytest.approx(0.5)


def test_prior_threshold_and_confidence_of_prior_labels():
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    assert float(prior_threshold(p, 0.5)) == pytest.approx(0.3)  # the two largest: 0.4, 0.3
    # with a confidence threshold, a prior foreground pixel counts by its foreground probability
    logits = _logits_with_foreground(p.reshape(1, 1, 4))
    strong = torch.zeros(1, 2, 1, 4)
    per_pixel = PseudoLabelConsistencyLoss(threshold=0.65, min_foreground_fraction=0.5, reduction="none")(strong, logits)
    # pseudo-labels 0, 0, 1, 1 with confidences 0.9, 0.8, 0.3, 0.4: only the first two pass 0.65
    assert torch.allclose(per_pixel[0, 0], torch.tensor([np.log(2), np.log(2), 0.0, 0.0], dtype=torch.float32), atol=1e-5)


def test_prior_argument_validation():
    for bad in (0.0, 1.0, -0.1, True, "a"):
        with pytest.raises(ValueError, match="min_foreground_fraction"):
            PseudoLabelConsistencyLoss(min_foreground_fraction=bad)
    with pytest.raises(ValueError, match="2 class channels"):
        PseudoLabelConsistencyLoss(min_foreground_fraction=0.1)(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))


def test_foreground_prior_from_the_source_labels(tmp_path):
    root = make_demo_data(tmp_path / "demo", num_slices=3, size=128)
    from mito_monai.datasets import load_split

    _, label = load_split("vnc3", root / "source", "train", with_label=True)
    expected = np.count_nonzero(label) / label.size
    assert 0 < expected < 1
    assert label_foreground_fraction("vnc3", root / "source", "train") == pytest.approx(expected)
    assert foreground_prior("source", "vnc3", root / "source", "train") == pytest.approx(expected)
    assert foreground_prior("none", "vnc3", root / "source", "train") is None
    assert foreground_prior(None, "vnc3", tmp_path / "missing", "train") is None  # nothing is read
    assert foreground_prior("0.07", "vnc3", tmp_path / "missing", "train") == pytest.approx(0.07)
    with pytest.raises(ValueError, match="source-free run"):
        foreground_prior("source", "vnc3", root / "source", "train", source_free=True)
    # source-free: the fraction recorded in the source model's card, the source itself is not read
    (tmp_path / "model.json").write_text('{"source_foreground_fraction": 0.061}')
    assert foreground_prior("source", "vnc3", tmp_path / "missing", "train", source_free=True,
                            source_model=tmp_path / "model.pt") == pytest.approx(0.061)
    (tmp_path / "model.json").write_text('{"other": 1}')
    with pytest.raises(ValueError, match="model.json: expected a JSON object"):
        foreground_prior("source", "vnc3", tmp_path / "missing", "train", source_free=True, source_model=tmp_path / "model.pt")
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        foreground_prior(1.5, "vnc3", root / "source", "train")


def test_bundle_wires_the_source_prior_into_the_pseudo_label_term(tmp_path):
    from pathlib import Path

    from monai.bundle import ConfigParser

    root = make_demo_data(tmp_path / "demo", num_slices=3, size=128)
    configs = Path(__file__).resolve().parents[1] / "bundles" / "r4mito" / "configs"
    parser = ConfigParser()
    parser.read_config(str(configs / "train.json"))
    parser["dataset_dir"] = str(root)
    parser["pseudo_label_prior"] = "source"
    loss = parser.get_parsed_content("terms#reg#loss")
    assert loss.min_foreground_fraction == pytest.approx(label_foreground_fraction("vnc3", root / "source", "train"))
    parser = ConfigParser()
    parser.read_config(str(configs / "train.json"))
    parser["dataset_dir"] = str(root)
    assert parser.get_parsed_content("terms#reg#loss").min_foreground_fraction is None  # off by default
