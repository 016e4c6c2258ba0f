"""The napari plugin: manifest, "Segment mitochondria" and "Adapt to this volume" widgets, headless.

Needs the optional extra (``pip install -e ".[napari]"``: napari, pytest-qt, pytest-xvfb). napari's canvas needs
OpenGL, which Qt's offscreen platform does not give; pytest-xvfb starts a virtual X server (apt-get install xvfb
libgl1-mesa-dri) for the session, and without one these tests are skipped with that reason.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from mito_monai.datasets import load_split, make_demo_data
from mito_monai.napari_plugin.backend import AdaptationCancelled, adapt_to_volume, iter_segment, load_segmenter

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "mito_monai" / "napari_plugin" / "napari.yaml"
NET = {"channels": [4, 8, 16, 32], "infer_roi": [64, 64]}
TRAIN = {**NET, "crop_size": [32, 32], "batch_size": 2, "num_agents": 8, "agent_pool_stride": 2}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


if importlib.util.find_spec("napari") is None or importlib.util.find_spec("pytestqt") is None:
    # napari's fixture (``make_napari_viewer``) and pytest-qt's (``qtbot``) come with the napari extra; without it
    # the widget tests skip with the reason instead of erroring with "fixture not found"
    @pytest.fixture
    def make_napari_viewer():
        _needs_napari()

    @pytest.fixture
    def qtbot():
        _needs_napari()


def _qt_starts() -> str | None:
    """None when a Qt application starts in a child process (with this process's DISPLAY), else why not: a Qt
    that cannot load its platform plugin aborts the whole process, so it is tried in a child first."""
    import subprocess
    import sys

    probe = "from qtpy.QtWidgets import QApplication; QApplication([])"
    try:
        res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "a Qt application did not start within 120 s"
    if res.returncode == 0:
        return None
    lines = [line for line in (res.stderr or "").splitlines() if line.strip()]
    return "Qt cannot start here (" + (lines[0] if lines else f"exit status {res.returncode}") + "): install the X11/xcb libraries of .ci/run"


if importlib.util.find_spec("napari") is not None and importlib.util.find_spec("pytestqt") is not None:
    _QT_PROBLEM = _qt_starts() if os.environ.get("DISPLAY") else None
    if _QT_PROBLEM:
        # these override napari's and pytest-qt's fixtures, which would abort the test process in Qt's start-up

        @pytest.fixture
        def make_napari_viewer():
            pytest.skip(_QT_PROBLEM)

        @pytest.fixture
        def qtbot():
            pytest.skip(_QT_PROBLEM)


def _needs_napari():
    pytest.importorskip("napari", reason="the napari extra is not installed (pip install -e '.[napari]')")
    pytest.importorskip("pytestqt", reason="pytest-qt is not installed (part of the napari extra)")
    if not os.environ.get("DISPLAY"):
        pytest.skip("no X display for napari's OpenGL canvas: install xvfb + libgl1-mesa-dri and pytest-xvfb")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from mito_monai.networks.nets import MitoUNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(MitoUNet(spatial_dims=2, in_channels=1, out_channels=2, channels=NET["channels"]).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("demo"), num_slices=3, size=128)


def test_manifest_is_valid_and_names_the_widgets():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    titles = {w.display_name for w in manifest.contributions.widgets}
    assert titles == {"Segment mitochondria", "Adapt to this volume", "Measure mitochondria"}
    import importlib

    for command in manifest.contributions.commands:
        module, name = command.python_name.split(":")
        pytest.importorskip("napari")
        assert callable(getattr(importlib.import_module(module), name))


def test_backend_segments_like_the_stack_segmenter_and_adaptation_can_be_cancelled(checkpoint, demo, tmp_path):
    segmenter = load_segmenter("r4mito", checkpoint, NET)
    volume = np.random.default_rng(0).random((2, 64, 80)).astype(np.float32)
    out = list(iter_segment(segmenter, volume))
    assert [(z, d) for z, d, _ in out] == [(0, 2), (1, 2)]
    np.testing.assert_array_equal(out[1][2], segmenter.predict_slice(volume[1]))
    with pytest.raises(FileNotFoundError, match="model.pt"):
        load_segmenter("r4mito", tmp_path / "missing" / "model.pt", NET)

    image, _ = load_split("lucchi_pp", demo / "target", "test")
    cancel, seen = threading.Event(), []
    cancel.set()  # stops after the first iteration
    with pytest.raises(AdaptationCancelled, match="iteration 1 of 50"):
        adapt_to_volume(
            image, demo / "source", tmp_path / "run", method="baseline", num_iterations=50, overrides=TRAIN,
            progress=lambda i, n: seen.append((i, n)), cancel=cancel,
        )
    assert seen == [(1, 50)]

    # warm start from a source model, no target labels: a bundle run without final_metrics.json or report
    model = adapt_to_volume(
        image, demo / "source", tmp_path / "warm", method="noadapt", num_iterations=1, init_checkpoint=checkpoint,
        overrides=TRAIN,
    )
    assert model.is_file() and not (tmp_path / "warm" / "eval" / "final_metrics.json").exists()
    assert (tmp_path / "warm" / "eval" / "history.jsonl").is_file()
    with pytest.raises(FileExistsError, match="already holds a run"):
        adapt_to_volume(image, demo / "source", tmp_path / "warm", method="noadapt", num_iterations=1, overrides=TRAIN)


def _viewer_with_image(make_napari_viewer, data, scale):
    viewer = make_napari_viewer()
    layer = viewer.add_image(data, name="em", scale=scale)
    return viewer, layer


def test_segment_widget_adds_probability_and_labels_with_the_layer_scale(make_napari_viewer, qtbot, checkpoint, tmp_path):
    _needs_napari()
    from mito_monai.napari_plugin.widgets import SegmentWidget

    data = np.random.default_rng(1).random((3, 64, 64)).astype(np.float32)
    viewer, layer = _viewer_with_image(make_napari_viewer, data, (2.0, 0.5, 0.5))
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.image.value is layer
    widget.checkpoint.value = str(checkpoint)
    widget.settings.value = '{"channels": [4, 8, 16, 32], "infer_roi": [64, 64]}'
    widget.instances.value = True
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: len(widget.result_layers) == 2, timeout=60_000)
    prob_layer, labels_layer = widget.result_layers
    assert labels_layer.data.shape == data.shape and tuple(labels_layer.scale) == (2.0, 0.5, 0.5)
    assert tuple(prob_layer.scale) == (2.0, 0.5, 0.5)
    expected = np.stack([p for _, _, p in iter_segment(load_segmenter("r4mito", checkpoint, NET), data)])
    np.testing.assert_allclose(prob_layer.data, expected, atol=1e-6)
    from scipy import ndimage

    assert labels_layer.data.max() == ndimage.label(expected >= 0.5, structure=np.ones((3, 3, 3)))[1]
    assert widget.progress.value == widget.progress.max == 3
    shot = viewer.screenshot(path=str(tmp_path / "napari.png"), canvas_only=False)
    assert shot.ndim == 3 and (tmp_path / "napari.png").is_file()


def test_segment_widget_cancel_stops_the_worker(make_napari_viewer, qtbot, checkpoint):
    _needs_napari()
    from mito_monai.napari_plugin.widgets import SegmentWidget

    data = np.random.default_rng(2).random((400, 64, 64)).astype(np.float32)
    viewer, _ = _viewer_with_image(make_napari_viewer, data, (1.0, 1.0, 1.0))
    widget = SegmentWidget(viewer)
    widget.checkpoint.value = str(checkpoint)
    widget.settings.value = '{"channels": [4, 8, 16, 32], "infer_roi": [64, 64]}'
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.progress.value >= 1, timeout=60_000)
    assert widget.cancel_button.enabled
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=60_000)
    assert widget.result_layers == [] and widget.progress.value < 400 and widget.status.value == "cancelled"


def test_adapt_widget_trains_saves_the_run_and_segments(make_napari_viewer, qtbot, demo, tmp_path):
    _needs_napari()
    from mito_monai.napari_plugin.widgets import AdaptWidget

    image, label = load_split("lucchi_pp", demo / "target", "test")
    viewer, layer = _viewer_with_image(make_napari_viewer, image, (1.0, 2.0, 2.0))
    viewer.add_labels(label.astype(np.uint8), name="truth")
    widget = AdaptWidget(viewer)
    widget.target_labels.value = viewer.layers["truth"]
    widget.source_dir.value = str(demo / "source")
    widget.method.value = "baseline"
    widget.iterations.value = 2
    widget.output_dir.value = str(tmp_path / "run")
    widget.settings.value = '{"channels": [4, 8, 16, 32], "infer_roi": [64, 64], "crop_size": [32, 32], "batch_size": 2}'
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: len(widget.result_layers) == 2, timeout=180_000)
    assert (tmp_path / "run" / "models" / "model.pt").is_file()
    assert (tmp_path / "run" / "eval" / "final_metrics.json").is_file()
    assert widget.progress.value == 2
    assert widget.result_layers[1].data.shape == image.shape and tuple(widget.result_layers[1].scale) == (1.0, 2.0, 2.0)


def test_measure_backend_features_table_of_a_labels_array():
    from mito_monai.morphology import measure_arrays

    labels = np.zeros((6, 20, 20), np.uint8)
    labels[1:4, 2:6, 2:8], labels[2:5, 10:18, 10:12] = 3, 5
    table, summary = measure_arrays(labels, voxel_size=(2.0, 0.5, 0.5))
    assert table["label"].tolist() == [3, 5] and table["volume"].tolist() == [3 * 4 * 6 * 0.5, 3 * 8 * 2 * 0.5]
    assert summary["count"] == 2
    with pytest.raises(ValueError, match="my layer holds float64"):
        measure_arrays(labels.astype(float), name="my layer")


def test_measure_widget_fills_the_table_and_features_and_selects_a_row(make_napari_viewer, qtbot):
    _needs_napari()
    from mito_monai.napari_plugin.measure_widget import MeasureWidget

    labels = np.zeros((6, 20, 20), np.uint8)
    labels[1:4, 2:6, 2:8], labels[2:5, 10:18, 10:12] = 3, 5
    viewer = make_napari_viewer()
    layer = viewer.add_labels(labels, scale=(2.0, 0.5, 0.5))
    widget = MeasureWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.labels_layer.value is layer
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.result is not None, timeout=30_000)
    assert list(layer.features["index"]) == [3, 5] and layer.features["volume"].tolist() == [36.0, 24.0]
    assert widget.table.data.to_list()[1][0] == 5
    widget.select_row(1)
    assert layer.selected_label == 5 and viewer.dims.point[0] == pytest.approx(3 * 2.0)
