"""napari widget "Measure mitochondria": the morphology table of a labels layer, one row per object.

The table is shown in the widget and set as the labels layer's ``features`` (napari shows them on hover); clicking
a row selects that object in the layer (only it is shown) and moves the viewer to the slice of its centroid.
The measurement runs in a napari thread worker (:func:`mito_monai.morphology.measure_arrays`, in memory).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, Table
from napari.layers import Image, Labels
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error

from mito_monai.morphology import format_summary, measure_arrays

__all__ = ["MeasureWidget", "layer_features"]

#: columns shown in the widget's table (the layer's features hold all of them)
SHOWN = ("label", "volume", "surface_area", "sphericity", "elongation", "solidity", "mean_intensity",
         "touches_border", "neighbours")


def layer_features(table):
    """The table as a labels layer's ``features``: napari maps rows to label values by the ``index`` column."""
    features = table.copy()
    features.insert(0, "index", features["label"].to_numpy())
    return features


def _layers_of(viewer: Any, kind: type) -> list[tuple[str, Any]]:
    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kind)]


class MeasureWidget(Container):
    """Measure the objects of a labels layer (optionally the mean intensity of an image layer).

    The layer's ``scale`` is the voxel size (its units are the layer's). A click on a row selects the object.
    """

    def __init__(self, napari_viewer: Any) -> None:
        self.viewer = napari_viewer
        self.labels_layer = ComboBox(label="labels", choices=lambda _: _layers_of(napari_viewer, Labels))
        self.image = ComboBox(label="image (optional)", choices=lambda _: [("none", None)] + _layers_of(napari_viewer, Image))
        self.skeleton = CheckBox(label="skeleton (branches, length)", value=False)
        self.run_button = PushButton(text="Measure")
        self.status = Label(value="")
        self.table = Table(value={c: [] for c in SHOWN})
        super().__init__(widgets=[self.labels_layer, self.image, self.skeleton, self.run_button, self.status, self.table])
        self.result = None
        self._layer = None
        self.run_button.changed.connect(self._start)
        self.table.native.cellClicked.connect(lambda row, _column: self.select_row(row))
        napari_viewer.layers.events.inserted.connect(self.reset_choices)
        napari_viewer.layers.events.removed.connect(self.reset_choices)
        self.reset_choices()

    def _start(self) -> None:
        layer, image = self.labels_layer.value, self.image.value
        if layer is None:
            show_error("choose a labels layer to measure.")
            return
        data = np.asarray(layer.data)
        pixels = None if image is None else np.asarray(image.data)
        worker = thread_worker(measure_arrays, start_thread=False)(
            data, pixels, voxel_size=tuple(layer.scale), skeleton=bool(self.skeleton.value), name=layer.name)
        worker.returned.connect(lambda result: self.show(layer, *result))
        worker.errored.connect(lambda e: (show_error(str(e)), setattr(self.status, "value", f"error: {e}")))
        worker.finished.connect(lambda: setattr(self.run_button, "enabled", True))
        self.run_button.enabled = False
        self.status.value = f"measuring {layer.name}..."
        worker.start()

    def show(self, layer: Any, table, summary: dict) -> None:
        """Put ``table`` in the widget and in ``layer.features``."""
        self.result, self._layer = table, layer
        layer.features = layer_features(table)
        self.table.value = {c: table[c].tolist() for c in SHOWN if c in table}
        self.status.value = f"{summary['count']} objects; median sphericity {summary['sphericity']['median']}"
        self.table.tooltip = format_summary(summary)

    def select_row(self, row: int) -> None:
        """Select the object of table row ``row`` in its layer and go to its centroid's slice."""
        if self.result is None or not 0 <= row < len(self.result):
            return
        record = self.result.iloc[row]
        layer = self._layer
        layer.selected_label = int(record["label"])
        layer.show_selected_label = True
        centroid = [record[f"centroid_{a}"] for a in "zyx"][-layer.ndim:]
        world = np.asarray(layer.data_to_world(centroid))
        for axis, value in zip(range(self.viewer.dims.ndim - layer.ndim, self.viewer.dims.ndim), world):
            self.viewer.dims.set_point(axis, float(value))
