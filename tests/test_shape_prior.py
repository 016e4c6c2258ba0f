"""The source labels' shape prior as a label-free score (metrics.shape_prior, setting_choice.shape_scores)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mito_monai.cli import main
from mito_monai.inference import StackSegmenter
from mito_monai.metrics import object_shapes, shape_distance
from mito_monai.networks import MitoUNet
from mito_monai.setting_choice import choose_default, choose_setting, label_free_scores, shape_scores
from tests.test_layouts import make_lucchi_pp

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _masks():
    m = np.zeros((2, 40, 40), np.uint8)
    m[0, 5:15, 5:15] = 1  # a square: area 100, solidity 1
    m[0, 20:30, 20:30] = 1
    m[0, 22:28, 25:30] = 0  # a C: area 70, hull 100, solidity 0.7
    m[1, 0:5, 10:15] = 1  # cut by the border: left out
    m[1, 30:32, 30:32] = 1  # 4 pixels: left out
    m[1, 33:36, 33:36] = 1
    m[1, 36, 36] = 1  # touches (35, 35) diagonally: one object with 8-connectivity, area 10
    return m


def test_object_shapes_by_hand():
    t = object_shapes(_masks(), min_area=5)
    order = np.argsort(t["area"])
    assert t["area"][order].tolist() == [10.0, 70.0, 100.0]
    assert t["solidity"][order][1:].tolist() == pytest.approx([0.7, 1.0])
    assert (t["objects"], t["left_out_border"], t["left_out_small"], t["sections"]) == (3, 1, 1, 2)
    assert object_shapes(np.zeros((4, 4)))["objects"] == 0  # a 2D mask is one section
    with pytest.raises(ValueError, match="min_area"):
        object_shapes(_masks(), min_area=0)
    with pytest.raises(ValueError, match=r"\(Z, Y, X\)"):
        object_shapes(np.zeros((1, 2, 3, 4)))


def test_shape_distance_by_hand():
    ref = {"area": np.array([100.0]), "solidity": np.array([1.0]), "objects": 1, "sections": 1}
    pred = {"area": np.array([10.0, 1000.0]), "solidity": np.array([0.7, 0.9]), "objects": 2, "sections": 2}
    d = shape_distance(pred, ref)
    # W1 to a point mass is the mean absolute difference: solidity (0.3 + 0.1) / 2; log10 area (1 + 1) / 2
    assert d["solidity_distance"] == pytest.approx(0.2)
    assert d["log_area_distance"] == pytest.approx(1.0)
    assert (d["objects_per_section"], d["median_solidity"]) == (1.0, pytest.approx(0.8))
    assert shape_distance(ref, ref)["solidity_distance"] == 0.0
    empty = {"area": np.zeros(0), "solidity": np.zeros(0), "objects": 0, "sections": 3}
    assert shape_distance(empty, ref)["solidity_distance"] == float("inf")
    with pytest.raises(ValueError, match="no shape prior"):
        shape_distance(ref, empty)


def _run(root, name, seed, agreement=0.9, fg=0.05, state=None):
    run = root / name / f"baseline_seed{seed}"
    (run / "eval").mkdir(parents=True)
    (run / "models").mkdir()
    history = [{"iteration": 500, "agreement": agreement, "foreground_fraction": fg}]
    (run / "eval" / "final_metrics.json").write_text(json.dumps({"seed": seed, "metrics": {"IoU": 0.5}, "selection": {"history": history}}))
    if state is not None:
        torch.save(state, run / "models" / "model.pt")
    return run


def test_shape_scores_read_no_target_label_and_match_a_brute_force_score(tmp_path):
    rng = np.random.default_rng(0)
    target = rng.integers(0, 255, (4, 48, 48), dtype=np.uint8)
    source_labels = _masks().repeat(2, axis=0)[:, :40, :40]
    source = make_lucchi_pp(tmp_path / "src", {"train": (rng.integers(0, 255, (4, 40, 40), dtype=np.uint8), source_labels)})
    tgt = make_lucchi_pp(tmp_path / "tgt", {"train": (target, np.zeros_like(target))})
    for f in (tgt / "Train_Out").iterdir():  # target labels that cannot be read: a run that reads them fails
        f.write_bytes(b"not a png")
    torch.manual_seed(0)
    net = MitoUNet(spatial_dims=2, in_channels=1, out_channels=2, channels=[4, 8])
    run = _run(tmp_path, "cand", 0, state=net.state_dict())
    records = shape_scores([run], target=f"lucchi_pp:{tgt}:train", source=("lucchi_pp", str(source), "train"), channels=[4, 8], min_area=2)
    written = json.loads((run / "eval" / "shape_scores.json").read_text())
    assert records == [written]
    segmenter = StackSegmenter(net, roi_size=(48, 48))
    masks = np.stack([segmenter.predict_slice(s.astype(np.float32)) >= 0.5 for s in target[::2]])
    expected = shape_distance(object_shapes(masks, min_area=2), object_shapes(source_labels, min_area=2))
    assert written["solidity_distance"] == pytest.approx(expected["solidity_distance"])
    assert written["foreground_fraction"] == pytest.approx(masks.mean())
    assert label_free_scores(run / "eval" / "final_metrics.json", shapes=True)["solidity_distance"] == written["solidity_distance"]
    with pytest.raises(FileExistsError, match="shape_scores.json exists"):
        shape_scores([run], target=f"lucchi_pp:{tgt}:train", source=f"lucchi_pp:{source}:train", channels=[4, 8])
    with pytest.raises(FileNotFoundError, match="model.pt does not exist"):
        shape_scores([_run(tmp_path, "nomodel", 0)], target=f"lucchi_pp:{tgt}:train", source=f"lucchi_pp:{source}:train")
    with pytest.raises(ValueError, match="LAYOUT:DIR:SPLIT"):
        shape_scores([run], target="lucchi_pp", source=f"lucchi_pp:{source}:train", overwrite=True)
    # a run trained with --target_histogram_match is scored on matched targets, as it was trained
    matched = _run(tmp_path, "matched", 0, state=net.state_dict())
    reference = {"intensity_quantiles": np.linspace(0.2, 0.6, 16).tolist()}
    (matched / "models" / "histogram_reference.json").write_text(json.dumps(reference))
    [scored] = shape_scores([matched], target=f"lucchi_pp:{tgt}:train", source=f"lucchi_pp:{source}:train", channels=[4, 8], min_area=2)
    segmenter = StackSegmenter(net, roi_size=(48, 48), histogram_reference=reference)
    masks = np.stack([segmenter.predict_slice(s.astype(np.float32)) >= 0.5 for s in target[::2]])
    assert scored["foreground_fraction"] == pytest.approx(masks.mean()) and scored["foreground_fraction"] != written["foreground_fraction"]
    # a run trained with --match_resolution is scored at the pixel size it was trained at
    rescaled = _run(tmp_path, "rescaled", 0, state=net.state_dict())
    record = json.loads((rescaled / "eval" / "final_metrics.json").read_text())
    (rescaled / "eval" / "final_metrics.json").write_text(json.dumps({**record, "resolution_scale": 1.5}))
    [scored] = shape_scores([rescaled], target=f"lucchi_pp:{tgt}:train", source=f"lucchi_pp:{source}:train", channels=[4, 8], min_area=2)
    segmenter = StackSegmenter(net, roi_size=(48, 48), scale=1.5)
    masks = np.stack([segmenter.predict_slice(s.astype(np.float32)) >= 0.5 for s in target[::2]])
    assert scored["resolution_scale"] == 1.5 and scored["foreground_fraction"] == pytest.approx(masks.mean())
    main(["shape-scores", str(run), "--target", f"lucchi_pp:{tgt}:train", "--source", f"lucchi_pp:{source}:train",
          "--channels", "[4, 8]", "--min_area", "2", "--overwrite", "true"])
    assert json.loads((run / "eval" / "shape_scores.json").read_text()) == written


def test_solidity_criterion_lowest_wins_and_needs_the_scores(tmp_path):
    runs = {
        "close": [{"seed": 0, "agreement": 0.80, "foreground_fraction": 0.05, "solidity_distance": 0.02}],
        "far": [{"seed": 0, "agreement": 0.90, "foreground_fraction": 0.05, "solidity_distance": 0.10}],
        "wide": [{"seed": 0, "agreement": 0.70, "foreground_fraction": 0.30, "solidity_distance": 0.01}],
    }
    a = choose_setting(runs, 0.05, criterion="solidity_distance")
    assert (a["choice"], a["criterion"], a["candidates"]["close"]["solidity_distance"]) == ("close", "solidity_distance", 0.02)
    assert choose_setting(runs, 0.05)["choice"] == "far"  # the rule's agreement
    b = choose_setting({n: [{**r[0], "solidity_distance": 0.05}] for n, r in runs.items()} | {"far": [{**runs["far"][0], "solidity_distance": 0.0}]}, 0.05, criterion="solidity_distance")
    # averaged over the pairs: close (0.02 + 0.05) / 2 = 0.035 beats far (0.10 + 0.0) / 2 = 0.05
    assert choose_default({"A": a, "B": b})["choice"] == "close"
    assert choose_default({"A": a, "B": b})["candidates"]["far"]["solidity_distance"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="different criteria"):
        choose_default({"A": a, "B": choose_setting(runs, 0.05)})
    with pytest.raises(ValueError, match="criterion must be one of"):
        choose_setting(runs, 0.05, criterion="iou")
    with pytest.raises(ValueError, match="no solidity_distance"):
        choose_setting({"x": [{"seed": 0, "agreement": 0.9, "foreground_fraction": 0.05}]}, 0.05, criterion="solidity_distance")
    run = _run(tmp_path, "unscored", 0)
    with pytest.raises(SystemExit):
        main(["choose-setting", f"x={run}", "--source_fraction", "0.05", "--criterion", "solidity_distance"])
