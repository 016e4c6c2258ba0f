"""napari widgets: "Segment mitochondria" and "Adapt to this volume" (the plugin's manifest is ``napari.yaml``).

Both run their work in a napari thread worker with a progress bar and a Cancel button, and add the results as
layers with the input layer's scale and translation.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, LineEdit, ProgressBar, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from mito_monai.napari_plugin.backend import (
    BUNDLES,
    METHODS,
    AdaptationCancelled,
    adapt_to_volume,
    default_checkpoint,
    iter_segment,
    label_mask_instances,
    load_segmenter,
    parse_overrides,
)

__all__ = ["AdaptWidget", "SegmentWidget"]

LAYOUTS = ("vnc3", "lucchi", "lucchi_pp", "mitoem", "folder")


def _layers_of(viewer: Any, kind: type) -> list[tuple[str, Any]]:
    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kind)]


def _grey_layer(layer: Any, what: str) -> Any:
    """``layer`` when it is a grey 2D image or 3D stack; a ValueError naming it otherwise."""
    if layer is None:
        raise ValueError(f"choose {what}.")
    if layer.rgb or np.ndim(layer.data) not in (2, 3):
        raise ValueError(f"layer {layer.name!r} must be a grey 2D image or 3D stack, got shape {np.shape(layer.data)}.")
    return layer


class _Progress(QObject):
    """Carries progress from a worker thread to the GUI thread (a queued Qt signal)."""

    changed = Signal(int, int)


class _WorkerWidget(Container):
    """Shared parts: a run button, a Cancel button, a progress bar and a status line; one worker at a time."""

    run_text = "Run"

    def __init__(self, viewer: Any, fields: list) -> None:
        self.viewer = viewer
        self.run_button = PushButton(text=self.run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value="")
        super().__init__(widgets=[*fields, self.run_button, self.cancel_button, self.progress, self.status])
        self.worker = None
        self.result_layers: list[Any] = []
        self.run_button.changed.connect(self._start)
        self.cancel_button.changed.connect(self.cancel)
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)
        self.reset_choices()

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running

    def _set_progress(self, done: int, total: int) -> None:
        self.progress.max = max(total, 1)
        self.progress.value = min(done, max(total, 1))

    def _start(self) -> None:
        try:
            worker = self.make_worker()
        except (ValueError, FileNotFoundError, FileExistsError, OSError) as e:
            show_error(str(e))
            self.status.value = f"error: {e}"
            return
        self.worker = worker
        worker.errored.connect(self._errored)
        worker.finished.connect(lambda: self._set_running(False))
        self._set_running(True)
        worker.start()

    def _errored(self, error: Exception) -> None:
        self.status.value = f"error: {error}"
        show_error(str(error))

    def cancel(self) -> None:
        """Stop the running worker (after the current slice or iteration)."""
        if self.worker is not None:
            self.worker.quit()
            self.status.value = "cancelling..."

    def make_worker(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def _add_results(self, source: Any, prob: np.ndarray, mask: np.ndarray, name: str) -> None:
        geometry = {"scale": source.scale, "translate": source.translate}
        self.result_layers = [
            self.viewer.add_image(prob, name=f"{name} probability", colormap="magma", blending="additive", opacity=0.6, **geometry),
            self.viewer.add_labels(mask, name=f"{name} mitochondria", **geometry),
        ]


def _segment_generator(segmenter: Any, data: np.ndarray, instances: bool, threshold: float):
    """Generator worker body: yields (done, total) per slice, returns (prob, mask) in the layer's shape."""
    slices = []
    for z, depth, prob in iter_segment(segmenter, data):
        slices.append(prob)
        yield z + 1, depth
    prob = np.stack(slices).reshape(data.shape).astype(np.float32)
    mask = prob >= threshold
    return prob, (label_mask_instances(mask) if instances else mask.astype(np.uint8))


class SegmentWidget(_WorkerWidget):
    """Segment mitochondria in an image layer with a trained bundle model.

    Pick an image layer (2D or a 3D stack), a bundle and its checkpoint (default: the bundle's
    ``models/model.pt``); optional network settings as JSON (e.g. ``{"channels": [16, 32, 64, 128]}`` when the
    model was trained with other channels than the bundle's defaults). The probabilities come back as an image
    layer and the mask (or its 3D connected components) as a labels layer with the image layer's scale.
    """

    run_text = "Segment"

    def __init__(self, napari_viewer: Any) -> None:
        self.image = ComboBox(label="image", choices=lambda _: _layers_of(napari_viewer, Image))
        self.bundle = ComboBox(label="bundle", choices=BUNDLES, value="r4mito")
        self.checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.pt", value=self._default(BUNDLES[0]))
        self.settings = LineEdit(label="network settings (JSON)", value="")
        self.instances = CheckBox(label="3D instances", value=False)
        super().__init__(napari_viewer, [self.image, self.bundle, self.checkpoint, self.settings, self.instances])
        self.bundle.changed.connect(lambda value: setattr(self.checkpoint, "value", self._default(value)))

    @staticmethod
    def _default(bundle: str) -> str:
        try:
            return str(default_checkpoint(bundle))
        except Exception:  # a bundle folder that is not there: leave the field for the user
            return ""

    def make_worker(self):
        layer = _grey_layer(self.image.value, "an image layer to segment")
        checkpoint = str(self.checkpoint.value) if str(self.checkpoint.value) not in ("", ".") else None
        segmenter = load_segmenter(self.bundle.value, checkpoint, parse_overrides(self.settings.value))
        data = np.asarray(layer.data)
        worker = thread_worker(_segment_generator, start_thread=False)(
            segmenter, data, self.instances.value, float(segmenter.threshold)
        )
        worker.yielded.connect(lambda done_total: self._set_progress(*done_total))
        worker.returned.connect(lambda result: self._finished(layer, *result))
        worker.aborted.connect(lambda: setattr(self.status, "value", "cancelled"))
        self._set_progress(0, data.shape[0] if data.ndim == 3 else 1)
        self.status.value = f"segmenting {layer.name}..."
        return worker

    def _finished(self, layer: Any, prob: np.ndarray, mask: np.ndarray) -> None:
        self._add_results(layer, prob, mask, layer.name)
        self.status.value = f"done: {int((mask > 0).sum())} mitochondria pixels"


def _adapt_then_segment(kwargs: dict, segment_overrides: dict, data: np.ndarray, cancel: threading.Event):
    model = adapt_to_volume(image=data, cancel=cancel, **kwargs)
    segmenter = load_segmenter("r4mito", model, segment_overrides)
    slices = [prob for _, _, prob in iter_segment(segmenter, data)]
    prob = np.stack(slices).reshape(data.shape).astype(np.float32)
    return model, prob, (prob >= segmenter.threshold).astype(np.uint8)


class AdaptWidget(_WorkerWidget):
    """Adapt the r4mito bundle to an unlabelled volume, then segment it with the adapted model.

    Pick the target image layer (optionally its labels layer, to score the result), the labelled source
    dataset (folder and layout), optionally a source model checkpoint to start from, the method (NoAdapt,
    CAFA-style baseline, R4MITO), the iterations and an output folder for the run (checkpoint, history,
    ``final_metrics.json`` when labels are given, MLflow when asked). Network settings as JSON go to both
    training and segmentation (e.g. ``{"channels": [16, 32, 64, 128], "crop_size": [128, 128]}``).
    """

    run_text = "Adapt and segment"

    def __init__(self, napari_viewer: Any) -> None:
        self.image = ComboBox(label="target image", choices=lambda _: _layers_of(napari_viewer, Image))
        self.target_labels = ComboBox(label="target labels (optional)", choices=lambda _: [("none", None)] + _layers_of(napari_viewer, Labels))
        self.source_dir = FileEdit(label="source dataset", mode="d")
        self.source_layout = ComboBox(label="source layout", choices=LAYOUTS, value="vnc3")
        self.source_split = LineEdit(label="source split", value="train")
        self.init_checkpoint = FileEdit(label="warm start (optional)", mode="r", filter="*.pt", value="")
        self.method = ComboBox(label="method", choices=METHODS, value="r4mito")
        self.iterations = SpinBox(label="iterations", min=1, max=1_000_000, value=300)
        default_out = Path(tempfile.gettempdir()) / "mito_monai_runs" / time.strftime("%Y%m%d_%H%M%S")
        self.output_dir = FileEdit(label="run folder", mode="d", value=str(default_out))
        self.mlflow = CheckBox(label="record in MLflow", value=False)
        self.settings = LineEdit(label="network settings (JSON)", value="")
        self._progress_signal = _Progress()
        self._progress_signal.changed.connect(self._set_progress)
        self._cancel = threading.Event()
        super().__init__(
            napari_viewer,
            [self.image, self.target_labels, self.source_dir, self.source_layout, self.source_split, self.init_checkpoint,
             self.method, self.iterations, self.output_dir, self.mlflow, self.settings],
        )

    def cancel(self) -> None:
        self._cancel.set()
        super().cancel()

    def make_worker(self):
        layer = _grey_layer(self.image.value, "the target image layer")
        source = str(self.source_dir.value)
        if source in ("", ".") or not Path(source).is_dir():
            raise FileNotFoundError(f"source dataset {source!r} is not a folder: choose the labelled source dataset.")
        settings = parse_overrides(self.settings.value)
        segment_overrides = {k: v for k, v in settings.items() if k in ("channels", "infer_roi")}
        label_layer = self.target_labels.value
        warm = str(self.init_checkpoint.value)
        kwargs = {
            "source_dir": source, "source_layout": self.source_layout.value, "source_split": self.source_split.value,
            "output_dir": str(self.output_dir.value), "method": self.method.value, "num_iterations": int(self.iterations.value),
            "init_checkpoint": warm if warm not in ("", ".") else None,
            "label": None if label_layer is None else np.asarray(label_layer.data),
            "tracking": bool(self.mlflow.value), "overrides": settings, "progress": self._progress_signal.changed.emit,
        }
        self._cancel.clear()
        data = np.asarray(layer.data)
        worker = thread_worker(_adapt_then_segment, start_thread=False)(kwargs, segment_overrides, data, self._cancel)
        worker.returned.connect(lambda result: self._finished(layer, *result))
        self._set_progress(0, int(self.iterations.value))
        self.status.value = f"training {self.method.value} on {layer.name}..."
        return worker

    def _errored(self, error: Exception) -> None:
        if isinstance(error, AdaptationCancelled):
            self.status.value = f"cancelled: {error}"
            show_info(str(error))
            return
        super()._errored(error)

    def _finished(self, layer: Any, model: Path, prob: np.ndarray, mask: np.ndarray) -> None:
        self._add_results(layer, prob, mask, f"{layer.name} ({self.method.value})")
        self.status.value = f"done: model {model}"
