"""Resolution matching: the in-plane rescale transform, the RescalingInferer, the pixel-size options, block-wise
inference at the model's pixel size, and an r4mito training with ``--match_resolution true`` scored at the
target's native label size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer

from mito_monai.datasets import make_demo_data, rescale_factor, resolution_scale
from mito_monai.inference import BlockPredictor, RescalingInferer
from mito_monai.transforms import RescaleToPixelSize, RescaleToPixelSized, train_transforms
from test_bundle import TINY as BUNDLE_TINY
from test_bundle import _run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "r4mito" / "configs"


def _smooth(h: int = 64, w: int = 80) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return (0.5 + 0.25 * torch.sin(2 * np.pi * y) * torch.cos(3 * np.pi * x))[None]


def _net(channels: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, channels, 3, padding=1)).eval()


# the transform ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale, shape", [(1.25, (1, 80, 100)), (0.5, (1, 32, 40)), (1 / 3, (1, 21, 27))])
def test_rescale_shape_and_labels_stay_binary(scale, shape):
    rng = np.random.default_rng(0)
    label = torch.from_numpy(rng.random((1, 64, 80)) > 0.7).float()
    out = RescaleToPixelSized(("image", "label"), scale)({"image": _smooth(), "label": label})
    assert tuple(out["image"].shape) == tuple(out["label"].shape) == shape
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0


@pytest.mark.parametrize("scale", [0.5, 0.8, 1.25])
def test_down_then_up_round_trip_of_a_smooth_image(scale):
    image = _smooth()
    there = RescaleToPixelSize(scale)(image)
    back = RescaleToPixelSize(None)(there)
    assert back is there
    from mito_monai.transforms import resize_slices

    back = resize_slices(there, image.shape[-2:])
    assert tuple(back.shape) == tuple(image.shape)
    assert float((back - image).abs()[:, 4:-4, 4:-4].max()) < 0.03  # borders: interpolation at the edge


def test_rescale_none_or_one_is_the_identity_and_bad_scales_are_refused():
    image = _smooth()
    assert RescaleToPixelSize(None)(image) is image and RescaleToPixelSize(1.0)(image) is image
    for bad in (0, -1.5, "x", float("nan")):
        with pytest.raises(ValueError, match="scale must be a positive number"):
            RescaleToPixelSize(bad)
    with pytest.raises(ValueError, match="channel-first"):
        RescaleToPixelSize(2.0)(image[0])


def test_train_transforms_rescale_whole_slices_before_the_crop():
    pipeline = train_transforms(keys=("image", "label"), crop_size=(32, 32), intensity=False, rescale=1.25)
    assert isinstance(pipeline.transforms[1], RescaleToPixelSized) and pipeline.transforms[1].image.scale == 1.25
    out = pipeline({"image": _smooth() * 100, "label": (_smooth() > 0.5).float()})
    assert tuple(out["image"].shape) == (1, 32, 32) and set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}


# the inferer -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [None, 1.0])
def test_rescaling_inferer_at_scale_one_is_the_inner_inferer_exactly(scale):
    net, x = _net(), torch.rand(2, 1, 45, 51)
    inner = SlidingWindowInferer(roi_size=(32, 32), overlap=0.25, mode="gaussian")
    assert torch.equal(RescalingInferer(inner, scale)(x, net), inner(x, net))
    assert torch.equal(RescalingInferer(None, scale)(x, net), net(x))


@pytest.mark.parametrize("scale", [0.6, 1.3])
@pytest.mark.parametrize("channels", [1, 2])
def test_rescaling_inferer_answers_at_the_input_size_with_the_probabilities_mapped_back(scale, channels):
    net, x = _net(channels), torch.rand(2, 1, 45, 51)
    inner = SlidingWindowInferer(roi_size=(32, 32), overlap=0.25, mode="gaussian")
    out = RescalingInferer(inner, scale)(x, net)
    assert tuple(out.shape) == (2, channels, 45, 51) and out.dtype == torch.float32
    from mito_monai.transforms import resize_slices, scaled_size

    raw = inner(resize_slices(x, scaled_size((45, 51), scale)), net)
    prob = torch.softmax(raw, 1) if channels > 1 else torch.sigmoid(raw)
    mapped = torch.softmax(out, 1) if channels > 1 else torch.sigmoid(out)
    torch.testing.assert_close(mapped, resize_slices(prob, (45, 51)), atol=1e-5, rtol=0)


def test_block_predictor_with_scale_equals_the_rescaling_inferer():
    net = _net()
    image = np.random.default_rng(1).random((45, 51)).astype(np.float32)
    inner = SlidingWindowInferer(roi_size=(32, 32), sw_batch_size=4, overlap=0.25, mode="gaussian")
    predictor = BlockPredictor(net, inferer=inner, amp=False, scale=1.3)
    prob = predictor.predict_slice(image)
    x = torch.from_numpy((image - image.min()) / (image.max() - image.min()))[None, None]
    with torch.no_grad():
        expected = torch.softmax(RescalingInferer(inner, 1.3)(x, net), 1)[0, 1].numpy()
    assert prob.shape == (45, 51)
    np.testing.assert_allclose(prob, expected, atol=1e-5)
    with pytest.raises(ValueError, match="whole slices"):
        predictor.predict_region(image[None, :20], (0, 0), (slice(0, 20), slice(0, 51)), (45, 51))
    assert "scale" in predictor.fingerprint() and "scale" not in BlockPredictor(net, inferer=inner, amp=False).fingerprint()


# the options -----------------------------------------------------------------------------------------------
def test_pixel_size_options():
    assert resolution_scale(False, None, None) is None
    assert resolution_scale("true", 4, 5) == 1.25
    assert resolution_scale(True, "auto", "auto", "vnc3", "lucchi_pp") == pytest.approx(5.0 / 4.6)
    assert resolution_scale(True, "auto", "auto", "vnc3", "mitoem") == pytest.approx(8.0 / 4.6)
    with pytest.raises(ValueError, match="needs --target_pixel_size and --source_pixel_size.*missing: --source_pixel_size"):
        resolution_scale(True, None, 5)
    with pytest.raises(ValueError, match="--target_pixel_size must be .* > 0"):
        resolution_scale(True, 4, 0)
    with pytest.raises(ValueError, match="'folder' has no known pixel size"):
        resolution_scale(True, 4, "auto", "vnc3", "folder")
    assert rescale_factor() is None and rescale_factor("null", None) is None
    assert rescale_factor(8, 4) == 2.0
    with pytest.raises(ValueError, match="missing: --model_pixel_size"):
        rescale_factor(8)


# the bundle ------------------------------------------------------------------------------------------------
TINY = {**BUNDLE_TINY, "num_iterations": 2, "report": False}  # test_bundle's tiny settings, 2 iterations


def test_missing_pixel_sizes_give_the_clear_error(tmp_path, monkeypatch):
    from monai.bundle import ConfigParser

    monkeypatch.chdir(REPO)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"dataset_dir": str(tmp_path), "match_resolution": True, "target_pixel_size": 5})
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("resolution_scale")
    chain, e = [], err.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__
    assert any("missing: --source_pixel_size" in m for m in chain)


def test_r4mito_training_with_match_resolution_scores_at_the_native_label_size(tmp_path, monkeypatch):
    from mito_monai.datasets import load_split
    from mito_monai.io import read_volume
    from mito_monai.metrics import segmentation_metrics

    monkeypatch.chdir(REPO)
    demo = make_demo_data(tmp_path / "demo", num_slices=3, size=128)
    sizes = {"source_pixel_size": 4, "target_pixel_size": 5}
    _run(
        "training", "train.json", **TINY, dataset_dir=str(demo), ckpt_dir=str(tmp_path / "models"),
        output_dir=f"$'{tmp_path / 'eval'}'", method="r4mito", match_resolution=True, amp=False, **sizes,
    )
    record = json.loads((tmp_path / "eval" / "final_metrics.json").read_text())
    assert record["resolution_scale"] == 1.25 and record["iteration"] == 2

    # the same model evaluated at the native size by evaluate.json (same rescaling) gives the same figures ...
    common = dict(dataset_dir=str(demo), ckpt_path=str(tmp_path / "models" / "model.pt"), channels=TINY["channels"],
                  infer_roi=TINY["infer_roi"], amp=False, pixel_size=5, model_pixel_size=4)
    _run("evaluate", "evaluate.json", output_dir=str(tmp_path / "eval32"), **common)
    evaluated = json.loads((tmp_path / "eval32" / "evaluation_metrics.json").read_text())["metrics"]
    for key in ("mAP", "F1", "MCC", "IoU", "Dice", "ECE"):
        assert record["metrics"][key] == pytest.approx(evaluated[key], abs=1e-6), key
    # ... and so does block-wise inference with the pixel sizes, its probabilities scored against the native labels
    seg = tmp_path / "segmentation"
    _run("inference", "inference.json", output_dir=str(seg), overlap=0.25, max_window=0, **common)
    prob = read_volume(seg / "probabilities.tif")
    _, label = load_split("lucchi_pp", demo / "target", "test")
    assert prob.shape == label.shape == (3, 128, 128) and label.any()
    rescored = segmentation_metrics(prob, label)
    for key in ("mAP", "F1", "MCC", "IoU", "Dice"):
        assert rescored[key] == pytest.approx(evaluated[key], abs=1e-5), key
