"""What the napari widgets run, without Qt: segment an in-memory volume with a bundle's model, adapt a bundle to it.

Kept free of napari and Qt so that it runs (and is tested) anywhere; the widgets call it in thread workers.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mito_monai.engines.methods import METHODS as DOMAIN_ADAPTATION_METHODS
from mito_monai.io.errors import DataError

__all__ = [
    "BUNDLES",
    "METHODS",
    "AdaptationCancelled",
    "adapt_to_volume",
    "bundle_dir",
    "default_checkpoint",
    "iter_segment",
    "label_mask_instances",
    "load_segmenter",
    "parse_overrides",
]

#: bundles the widgets offer
BUNDLES = ("r4mito", "dualrel")
#: domain-adaptation methods the "Adapt to this volume" widget offers (r4mito bundle): the package's methods but
#: ``oracle``, which needs the labels of the volume adapted to
METHODS = tuple(name for name in DOMAIN_ADAPTATION_METHODS if name != "oracle")


class AdaptationCancelled(RuntimeError):
    """Raised by :func:`adapt_to_volume` when its ``cancel`` event was set during training."""


def bundle_dir(bundle: str | os.PathLike) -> Path:
    """A bundle folder: a path holding ``configs/``, or a bundle name (``r4mito``, ``dualrel``) of this repository."""
    path = Path(bundle)
    if (path / "configs").is_dir():
        return path.resolve()
    repo_bundle = Path(__file__).resolve().parents[2] / "bundles" / str(bundle)
    if (repo_bundle / "configs").is_dir():
        return repo_bundle
    raise DataError(f"{bundle}: expected a bundle folder with configs/ or one of the bundle names {list(BUNDLES)}.")


def default_checkpoint(bundle: str | os.PathLike) -> Path:
    """The bundle's shipped (or last trained) weights, ``<bundle>/models/model.pt``."""
    return bundle_dir(bundle) / "models" / "model.pt"


def parse_overrides(text: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Config overrides from a JSON object string (e.g. ``{"channels": [16, 32, 64, 128]}``); empty text gives {}."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return {}
    if isinstance(text, Mapping):
        return dict(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"network settings must be a JSON object such as {{\"channels\": [16, 32, 64, 128]}}: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"network settings must be a JSON object, got {type(value).__name__}.")
    return value


def load_segmenter(
    bundle: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    device: str | None = None,
):
    """The bundle's :class:`mito_monai.inference.StackSegmenter` (its ``inference.json``) with ``checkpoint`` loaded.

    Args:
        bundle: bundle name or folder.
        checkpoint: weights (``model.pt``); default the bundle's ``models/model.pt``.
        overrides: inference-config overrides, e.g. the ``channels`` the model was trained with, ``infer_roi``.
        device: "cpu", "cuda:0"...; default the config's (CUDA when available).
    """
    from monai.bundle import ConfigParser

    root = bundle_dir(bundle)
    checkpoint = Path(checkpoint) if checkpoint else default_checkpoint(root)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint} does not exist: expected the model weights (model.pt) of a {root.name} run.")
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.update({"bundle_root": str(root), "ckpt_path": str(checkpoint), **dict(overrides or {})})
    if device is not None:
        parser.update({"device": f"$torch.device('{device}')"})
    return parser.get_parsed_content("segmenter")


def _as_zyx(volume: np.ndarray) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim == 2:
        return volume[None]
    if volume.ndim != 3:
        raise ValueError(f"expected a 2D (Y, X) or 3D (Z, Y, X) grey image, got shape {volume.shape}.")
    return volume


def iter_segment(segmenter: Any, volume: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
    """Foreground probability of each slice of ``volume`` ((Z, Y, X) or (Y, X)): yields ``(z, depth, probability)``.

    One slice at a time through ``segmenter.predict_slice`` (the package's sliding-window inference), so a
    caller can show progress and stop between slices.
    """
    stack = _as_zyx(volume)
    for z in range(stack.shape[0]):
        yield z, stack.shape[0], segmenter.predict_slice(np.asarray(stack[z]))


def label_mask_instances(mask: np.ndarray) -> np.ndarray:
    """3D connected components (26-connectivity) of a binary mask, as int32 labels 1..N."""
    from scipy import ndimage

    labels, _ = ndimage.label(np.asarray(mask, dtype=bool), structure=np.ones((3,) * np.ndim(mask), dtype=bool))
    return labels.astype(np.int32)


def _write_target_dataset(root: Path, image: np.ndarray, label: np.ndarray | None) -> None:
    """``root/{train,test}/images`` (+ ``test/labels``) in the ``folder`` layout: the target volume for training and scoring."""
    from mito_monai.io import write_volume

    stack = _as_zyx(image).astype(np.float32)
    write_volume(root / "train" / "images" / "volume.tif", stack, overwrite=True)
    write_volume(root / "test" / "images" / "volume.tif", stack, overwrite=True)
    lab = np.zeros(stack.shape, dtype=np.uint8) if label is None else (_as_zyx(label) > 0).astype(np.uint8)
    if lab.shape != stack.shape:
        raise ValueError(f"the label layer has shape {lab.shape[-3:]} but the image {stack.shape}.")
    write_volume(root / "test" / "labels" / "volume.tif", lab, overwrite=True)


def adapt_to_volume(
    image: np.ndarray,
    source_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    source_layout: str = "vnc3",
    source_split: str = "train",
    method: str = "r4mito",
    num_iterations: int = 300,
    init_checkpoint: str | os.PathLike | None = None,
    label: np.ndarray | None = None,
    tracking: bool = False,
    overrides: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Train the r4mito bundle from a labelled source to the unlabelled target ``image``; returns the model path.

    The run is a normal bundle run in ``output_dir``: ``models/`` (checkpoints, ``model.pt``), ``eval/``
    (history; the report and ``final_metrics.json`` only when ``label`` is given, since without it there is nothing to
    score against), and an MLflow run in ``eval/mlruns.db`` when ``tracking``. The target volume is written to
    ``output_dir/target`` in the ``folder`` layout.

    Args:
        image: the target volume (Z, Y, X) or one slice (Y, X).
        source_dir, source_layout, source_split: the labelled source dataset.
        output_dir: folder of the run.
        method: ``noadapt``, ``baseline`` or ``r4mito``.
        num_iterations: training iterations.
        init_checkpoint: a source model (``model.pt``) to start from (warm start) instead of random weights.
        label: optional labels of ``image``, to score the adapted model.
        tracking: record the run in MLflow.
        overrides: more train-config overrides (e.g. ``channels``, ``crop_size``, ``batch_size``).
        progress: called with ``(iteration, num_iterations)`` after every iteration (from the training thread).
        cancel: set it to stop the training after the current iteration (raises :class:`AdaptationCancelled`).
    """
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if num_iterations < 1:
        raise ValueError(f"num_iterations must be >= 1, got {num_iterations}.")
    output_dir = Path(output_dir)
    if (output_dir / "models" / "model.pt").exists():
        raise FileExistsError(f"{output_dir} already holds a run (models/model.pt); choose a new output folder.")
    target = output_dir / "target"
    _write_target_dataset(target, image, label)
    root = bundle_dir("r4mito")
    overrides = dict(overrides or {})
    epoch_length = int(overrides.pop("epoch_length", min(100, num_iterations)))
    settings = {
        "bundle_root": str(root),
        "source_dir": str(source_dir), "source_layout": source_layout, "source_split": source_split,
        "target_dir": str(target), "target_layout": "folder", "target_train_split": "train", "target_eval_split": "test",
        "method": method, "num_iterations": num_iterations, "epoch_length": epoch_length,
        "val_interval": 10**9,  # the final model is scored once (FinalEvaluation)
        "report": label is not None,  # without labels the report's slices and calibration would be meaningless
        "ckpt_dir": str(output_dir / "models"), "output_dir": f"$'{output_dir / 'eval'}'",
        "init_checkpoint": str(init_checkpoint) if init_checkpoint else "",  # the bundle's warm start
        **overrides,
    }
    workflow = ConfigWorkflow(
        config_file=str(root / "configs" / "train.json"), meta_file=str(root / "configs" / "metadata.json"),
        logging_file=False, tracking="mlflow" if tracking else None, **settings,
    )
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    cancelled = []

    def step(engine) -> None:
        if progress is not None:
            progress(engine.state.iteration, num_iterations)
        if cancel is not None and cancel.is_set():
            cancelled.append(engine.state.iteration)
            engine.terminate()

    trainer.add_event_handler(Events.ITERATION_COMPLETED, step)
    try:
        workflow.run()
    finally:
        workflow.finalize()
    if cancelled:
        raise AdaptationCancelled(f"training cancelled at iteration {cancelled[0]} of {num_iterations}.")
    if label is None:
        (output_dir / "eval" / "final_metrics.json").unlink(missing_ok=True)
    return output_dir / "models" / "model.pt"
