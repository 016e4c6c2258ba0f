"""Histogram matching (``mito_monai.transforms.histogram``) and the r4mito option ``target_histogram_match``.

References: ``numpy.quantile`` of the concatenated pixels, ``skimage.exposure.match_histograms`` (the full
empirical map) on continuous data, and small maps computed by hand. The bundle tests run the r4mito training for
a few iterations on the tiny generated demo data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from conftest import exception_messages
from mito_monai.datasets import load_split, make_demo_data
from mito_monai.transforms import (
    MatchHistogram,
    MatchHistogramd,
    NormalizePerSlice,
    NormalizePerSliced,
    eval_transforms,
    intensity_quantiles,
    load_reference_quantiles,
    source_intensity_quantiles,
    target_histogram_reference,
    train_transforms,
)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _levels(n: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, n)


# intensity_quantiles ---------------------------------------------------------------------------------------------
def test_quantiles_of_pooled_images_equal_numpy_on_the_concatenation():
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(1, 9, 7)), torch.from_numpy(rng.uniform(size=(5, 4))), rng.integers(0, 9, size=(3,))]
    flat = np.concatenate([np.asarray(i, dtype=np.float64).reshape(-1) for i in images])
    for n in (2, 5, 256):
        np.testing.assert_allclose(intensity_quantiles(images, n), np.quantile(flat, _levels(n)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(intensity_quantiles(images[0], 3), np.quantile(images[0], _levels(3)))  # one array


def test_quantiles_over_the_cap_keep_every_image_with_one_doubling_stride():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(size=80), rng.uniform(size=80)
    # 80 values fit under 100; with the second image 160 do not: both are halved (stride 2)
    expected = np.quantile(np.concatenate([a[::2], b[::2]]), _levels(11))
    np.testing.assert_allclose(intensity_quantiles([a, b], 11, max_values=100), expected)


def test_quantile_argument_errors():
    with pytest.raises(ValueError, match="num_quantiles must be an int >= 2"):
        intensity_quantiles([np.zeros(4)], 1)
    with pytest.raises(ValueError, match="max_values must be an int >= num_quantiles"):
        intensity_quantiles([np.zeros(4)], 8, max_values=4)
    with pytest.raises(ValueError, match="at least one pixel"):
        intensity_quantiles([], 4)
    with pytest.raises(ValueError, match="image 1 has 1 NaN/Inf pixels"):
        intensity_quantiles([np.zeros(3), np.array([0.0, np.nan])], 4)


# MatchHistogram --------------------------------------------------------------------------------------------------
def test_matching_agrees_with_skimage_and_gives_the_reference_quantiles():
    from skimage.exposure import match_histograms

    rng = np.random.default_rng(2)
    image = rng.uniform(size=(1, 128, 128)).astype(np.float32)
    reference_image = rng.beta(2.0, 5.0, size=(256, 256))
    reference = intensity_quantiles([reference_image], 256)
    out = MatchHistogram(reference)(image)
    assert out.shape == image.shape and out.dtype == np.float32
    brute = match_histograms(image[0], reference_image)  # the full empirical map of skimage
    inner = (image[0] > 0.01) & (image[0] < 0.99)  # away from the sparse tails, 256 quantiles are close to it
    assert np.abs(out[0] - brute)[inner].max() < 5e-3
    assert np.abs(out[0] - brute).mean() < 1e-3
    np.testing.assert_allclose(intensity_quantiles([out], 256), reference, atol=1e-3)
    assert out.min() == pytest.approx(reference[0]) and out.max() == pytest.approx(reference[-1])


def test_matching_by_hand_and_ties():
    # 2 levels: the image's min and max go to the reference's, linear in between
    out = MatchHistogram([10.0, 20.0])(np.array([[0.0, 1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(out, [[10.0, 40 / 3, 50 / 3, 20.0]])
    # 3 levels of [0, 0, 0, 1]: quantiles 0, 0, 1; the tied quantile 0 goes to the mean of 0 and 5
    out = MatchHistogram([0.0, 5.0, 10.0])(np.array([0.0, 0.0, 0.0, 1.0]))
    np.testing.assert_allclose(out, [2.5, 2.5, 2.5, 10.0])


def test_matching_is_monotone_and_keeps_type_dtype_and_meta():
    rng = np.random.default_rng(3)
    image = MetaTensor(torch.from_numpy(rng.gamma(2.0, size=(1, 32, 32)).astype(np.float32)), meta={"tag": 1})
    out = MatchHistogram(np.sort(rng.uniform(size=16)))(image)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32 and out.meta["tag"] == 1
    order = torch.argsort(image.reshape(-1))
    assert (torch.diff(out.reshape(-1)[order].as_tensor()) >= 0).all()  # pixel order kept
    integer = rng.integers(0, 200, size=(2, 8, 8)).astype(np.uint8)
    out = MatchHistogram([0.0, 100.0, 255.0])(integer)
    assert out.dtype == np.uint8 and isinstance(out, np.ndarray)


def test_matching_is_the_identity_on_an_image_with_the_reference_distribution():
    rng = np.random.default_rng(4)
    image = rng.normal(size=(1, 40, 30)).astype(np.float32)
    out = MatchHistogram(intensity_quantiles([image], 64))(image)
    np.testing.assert_allclose(out, image, atol=1e-6)


def test_a_constant_image_goes_to_the_reference_median():
    out = MatchHistogram([0.0, 1.0, 10.0])(torch.full((1, 4, 4), 0.3))
    assert torch.allclose(out, torch.full((1, 4, 4), 1.0))
    out = MatchHistogram([0.0, 1.0, 3.0, 10.0])(np.zeros((5, 5), np.float32))  # median between 1 and 3
    np.testing.assert_allclose(out, 2.0)
    assert np.isfinite(out).all()


def test_dictionary_version_touches_only_its_keys():
    rng = np.random.default_rng(5)
    data = {"image": rng.uniform(size=(1, 8, 8)), "label": rng.integers(0, 2, (1, 8, 8)), "other": rng.uniform(size=(1, 8, 8))}
    out = MatchHistogramd("image", [2.0, 3.0])(data)
    assert out["label"] is data["label"] and out["other"] is data["other"]
    assert out["image"].min() == pytest.approx(2.0) and out["image"].max() == pytest.approx(3.0)
    with pytest.raises(KeyError):
        MatchHistogramd("missing", [0.0, 1.0])(data)
    assert MatchHistogramd("missing", [0.0, 1.0], allow_missing_keys=True)(data).keys() == data.keys()


def test_reference_from_a_json_file_and_bad_references(tmp_path):
    path = tmp_path / "reference.json"
    path.write_text(json.dumps({"intensity_quantiles": [0.0, 0.5, 1.0], "source": "x"}))
    np.testing.assert_array_equal(MatchHistogram(str(path)).reference_quantiles, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(load_reference_quantiles(path), [0.0, 0.5, 1.0])
    bad = {
        "must be 1D with at least 2 values": [[0.0, 1.0], [2.0, 3.0]],
        "at least 2 values, got shape \\(1,\\)": [0.5],
        "must be finite": [0.0, float("nan")],
        "must be non-decreasing, but value 2 \\(0.5\\) is below value 1 \\(0.7\\)": [0.0, 0.7, 0.5],
        "must be a list of numbers": ["a", "b"],
        "expected a JSON object with 'intensity_quantiles'": {"quantiles": [0.0, 1.0]},
    }
    for message, reference in bad.items():
        with pytest.raises(ValueError, match=message):
            MatchHistogram(reference)
    with pytest.raises(ValueError, match="missing.json: cannot read a histogram reference JSON file"):
        MatchHistogram(tmp_path / "missing.json")
    path.write_text(json.dumps({"intensity_quantiles": [1.0, 0.0]}))
    with pytest.raises(ValueError, match="reference.json: the quantiles must be non-decreasing"):
        MatchHistogram(path)
    with pytest.raises(ValueError, match="image_quantiles must have shape \\(2,\\)"):
        MatchHistogram([0.0, 1.0])(np.zeros(4), image_quantiles=[0.0, 0.5, 1.0])


# the presets and the source reference ----------------------------------------------------------------------------
def test_presets_match_right_after_the_normalisation_and_only_when_asked():
    for pipeline in (train_transforms(keys=("image",), crop_size=8, histogram_reference=[0.2, 0.4]),
                     eval_transforms(keys=("image",), histogram_reference=[0.2, 0.4])):
        assert isinstance(pipeline.transforms[0], NormalizePerSliced)
        assert isinstance(pipeline.transforms[1], MatchHistogramd)
    for pipeline in (train_transforms(keys=("image",), crop_size=8), eval_transforms(keys=("image",))):
        assert not any(isinstance(t, MatchHistogramd) for t in pipeline.transforms)
    out = eval_transforms(keys=("image",), histogram_reference=[0.2, 0.4])({"image": np.arange(12.0).reshape(1, 3, 4)})
    assert float(out["image"].min()) == pytest.approx(0.2) and float(out["image"].max()) == pytest.approx(0.4)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("demo"), num_slices=3, size=128)


def _normalised_source_quantiles(demo: Path) -> np.ndarray:
    """By hand: every source training slice, loaded whole and normalised on its own, pooled."""
    image, _ = load_split("vnc3", demo / "source", "train", with_label=False)
    normalize = NormalizePerSlice()
    return np.quantile(np.concatenate([np.asarray(normalize(s)).reshape(-1) for s in image]), _levels(256))


def test_source_quantiles_and_the_reference_of_the_option(demo, tmp_path):
    expected = _normalised_source_quantiles(demo)
    np.testing.assert_allclose(source_intensity_quantiles("vnc3", demo / "source", "train"), expected, atol=1e-7)
    assert target_histogram_reference(False, "vnc3", tmp_path / "missing", "train") is None  # nothing is read
    reference = target_histogram_reference("true", "vnc3", demo / "source", "train")
    np.testing.assert_allclose(reference["intensity_quantiles"], expected, atol=1e-7)
    assert reference["source"] == f"vnc3:{demo / 'source'}:train"
    # source-free: the card beside the model, the source itself is not read
    (tmp_path / "model.json").write_text(json.dumps({"source_intensity_quantiles": [0.0, 0.3, 1.0]}))
    card = target_histogram_reference(True, "vnc3", tmp_path / "missing", "train", source_free=True,
                                      source_model=tmp_path / "model.pt")
    assert card["intensity_quantiles"] == [0.0, 0.3, 1.0] and card["source"].endswith("model.json:source_intensity_quantiles")
    (tmp_path / "model.json").write_text(json.dumps({"source_foreground_fraction": 0.05}))
    with pytest.raises(ValueError, match="model.json: the source model's card has no 'source_intensity_quantiles'"):
        target_histogram_reference(True, "vnc3", tmp_path / "missing", "train", source_free=True,
                                   source_model=tmp_path / "model.pt")
    with pytest.raises(ValueError, match="other.json\\), which does not exist"):
        target_histogram_reference(True, "vnc3", tmp_path / "missing", "train", source_free=True,
                                   source_model=tmp_path / "other.pt")


def test_shipped_source_card_holds_valid_quantiles():
    card = json.loads((REPO / "bundles" / "r4mito" / "models" / "source_vnc3.json").read_text())
    q = load_reference_quantiles({"intensity_quantiles": card["source_intensity_quantiles"]})
    assert q.size == 256 and q[0] == 0.0 and q[-1] == 1.0


# the bundle ------------------------------------------------------------------------------------------------------
TINY = {
    "channels": [4, 8, 16, 32], "crop_size": [32, 32], "batch_size": 2, "epoch_length": 2, "num_iterations": 2,
    "val_interval": 1, "log_interval": 1, "infer_roi": [64, 64], "report": False, "selection": False,
}


def _train(tmp: Path, demo: Path, **overrides) -> Path:
    from monai.bundle import run

    configs = REPO / "bundles" / "r4mito" / "configs"
    args = {**TINY, "dataset_dir": str(demo), "ckpt_dir": str(tmp / "models"), "output_dir": f"$'{tmp / 'eval'}'"}
    run("training", config_file=str(configs / "train.json"), meta_file=str(configs / "metadata.json"),
        logging_file=False, **{**args, **overrides})
    return tmp / "models"


def test_bundle_run_saves_the_source_reference_it_matched_the_target_to(tmp_path, demo):
    models = _train(tmp_path / "run", demo, method="baseline", target_histogram_match=True)
    saved = json.loads((models / "histogram_reference.json").read_text())
    np.testing.assert_allclose(saved["intensity_quantiles"], _normalised_source_quantiles(demo), atol=1e-7)
    assert saved["source"] == f"vnc3:{demo / 'source'}:train"
    assert (models / "model.pt").is_file()
    off = _train(tmp_path / "off", demo, method="baseline")
    assert not (off / "histogram_reference.json").exists()


def test_bundle_source_free_run_needs_the_quantiles_in_the_card(tmp_path, demo):
    from mito_monai.networks.nets import MitoUNet

    source_model = tmp_path / "source_model.pt"
    torch.save(MitoUNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16, 32)).state_dict(), source_model)
    (tmp_path / "source_model.json").write_text(json.dumps({"source_foreground_fraction": 0.05}))
    with pytest.raises(Exception) as no_key:
        _train(tmp_path / "run", demo, source_dir=str(tmp_path / "no_such_source"), source_free=True, method="baseline",
               init_checkpoint=str(source_model), target_histogram_match=True)
    assert "source_model.json: the source model's card has no 'source_intensity_quantiles'" in exception_messages(no_key.value)


def test_bundle_wires_the_reference_into_the_target_pipelines_only(demo):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "r4mito" / "configs" / "train.json"))
    parser["dataset_dir"] = str(demo)
    parser["target_histogram_match"] = True
    expected = _normalised_source_quantiles(demo)

    def matchers(pipeline):
        return [t for t in pipeline.transforms if isinstance(t, MatchHistogramd)]

    for key in ("train#target_preprocessing", "validate#preprocessing"):
        (matcher,) = matchers(parser.get_parsed_content(key))
        np.testing.assert_allclose(matcher.matcher.reference_quantiles, expected, atol=1e-7)
    (matcher,) = matchers(parser.get_parsed_content("train#selection_dataset").dataset.transform)
    assert not matchers(parser.get_parsed_content("train#preprocessing"))  # the source pipeline is unchanged
    parser["method"] = "oracle"  # the labelled pipeline reads the target: matched too
    (matcher,) = matchers(parser.get_parsed_content("train#preprocessing", lazy=False))


# inference -------------------------------------------------------------------------------------------------------
def test_inference_matches_every_whole_slice_for_any_block_grid(tmp_path):
    import zarr

    from conftest import tiny_unet
    from mito_monai.inference import StackSegmenter
    from mito_monai.inference.block_predictor import normalize_slice
    from mito_monai.io import read_volume

    vol = np.random.default_rng(6).integers(0, 255, (3, 70, 90), dtype=np.uint8)
    zarr.create_array(tmp_path / "in.zarr", shape=vol.shape, chunks=(2, 32, 32), dtype="u1")[:] = vol
    reference = np.linspace(0.0, 1.0, 32) ** 2
    seg = StackSegmenter(tiny_unet(0).eval(), roi_size=(32, 32), amp=False, histogram_reference=reference)
    plain = StackSegmenter(tiny_unet(0).eval(), roi_size=(32, 32), amp=False)
    matched = MatchHistogram(reference)
    # by hand: each whole slice normalised, matched, then the plain network on it
    whole = np.stack([plain.predictor.predict_region(np.asarray(matched(normalize_slice(s)))[None], (0, 0),
                                                     (slice(0, 70), slice(0, 90)), (70, 90))[0] for s in vol])
    np.testing.assert_allclose(np.stack([seg.predict_slice(s) for s in vol]), whole, atol=1e-5)
    for i, tile in enumerate((4096, 32)):  # one block per slab, and slices cut in tiles
        w = seg.run(tmp_path / "in.zarr", tmp_path / f"out{i}", output_format="zarr", block_slices=2,
                    block_tile=tile, progress=False)
        np.testing.assert_allclose(read_volume(w["probabilities"]), whole, atol=1e-5)
    assert np.abs(np.stack([plain.predict_slice(s) for s in vol]) - whole).max() > 1e-3  # matching changed it
    assert "histogram_reference" in seg.predictor.fingerprint() and "histogram_reference" not in plain.predictor.fingerprint()


def test_inference_and_evaluate_configs_take_a_histogram_reference_file(tmp_path):
    from monai.bundle import ConfigParser

    path = tmp_path / "histogram_reference.json"
    path.write_text(json.dumps({"intensity_quantiles": [0.0, 0.2, 1.0], "source": "test"}))

    def parsed(config: str, **options):
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundles" / "r4mito" / "configs" / config))
        parser.update({"dataset_dir": str(tmp_path), **options})
        if config == "inference.json":
            matcher = parser.get_parsed_content("segmenter").predictor.matcher  # the shipped model.pt
        else:
            matchers = [t.matcher for t in parser.get_parsed_content("preprocessing").transforms if isinstance(t, MatchHistogramd)]
            matcher = matchers[0] if matchers else None
        return None if matcher is None else matcher.reference_quantiles.tolist()

    for config in ("inference.json", "evaluate.json"):
        assert parsed(config) is None and parsed(config, histogram_reference="none") is None  # unchanged by default
        assert parsed(config, histogram_reference=str(path)) == [0.0, 0.2, 1.0]
