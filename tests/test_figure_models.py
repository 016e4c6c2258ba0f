"""scripts/figure_models.py: one labelled slice, each model's TP / FP / FN overlay and its IoU on that slice."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from mito_monai.inference import StackSegmenter
from mito_monai.networks import MitoUNet
from tests.test_layouts import make_lucchi_pp

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _script():
    spec = importlib.util.spec_from_file_location("figure_models", REPO / "scripts" / "figure_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_figure_records_each_models_iou_on_the_slice(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (3, 32, 48), dtype=np.uint8)
    label = (rng.random((3, 32, 48)) > 0.7).astype(np.uint8)
    root = make_lucchi_pp(tmp_path / "lpp", {"test": (image, label)})
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = tmp_path / f"model{seed}.pt"
        torch.save(MitoUNet(spatial_dims=2, in_channels=1, out_channels=2, channels=[4, 8]).state_dict(), path)
        models.append(path)
    out = tmp_path / "fig.png"
    argv = ["--stack", f"lucchi_pp:{root}:test", "--slice", "1", "--channels", "4", "8", "--output", str(out),
            "--model", f"model 0={models[0]}", "--model", f"model 1={models[1]}"]
    record = _script().main(argv)
    assert out.is_file() and out.stat().st_size > 0 and record["slice"] == 1
    for i, path in enumerate(models):  # reference: the segmenter's mask of slice 1, IoU by hand
        segmenter = StackSegmenter(MitoUNet(spatial_dims=2, in_channels=1, out_channels=2, channels=[4, 8]), roi_size=(32, 48), checkpoint=path)
        mask = segmenter.predict_slice(image[1].astype(np.float32)) >= 0.5
        truth = label[1].astype(bool)
        expected = (truth & mask).sum() / (truth | mask).sum()
        assert record["models"][f"model {i}"]["IoU"] == pytest.approx(expected, abs=1e-4)
        assert record["models"][f"model {i}"]["foreground_fraction"] == pytest.approx(mask.mean(), abs=1e-4)
    with pytest.raises(SystemExit, match="exists"):  # the figure is kept
        _script().main(argv)
    with pytest.raises(SystemExit, match="LAYOUT:DIR:SPLIT"):
        _script().main(["--stack", "lucchi_pp", "--model", f"a={models[0]}", "--output", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match="slices 0 to 2"):
        _script().main(["--stack", f"lucchi_pp:{root}:test", "--slice", "7", "--channels", "4", "8", "--model", f"a={models[0]}", "--output", str(tmp_path / "y.png")])
