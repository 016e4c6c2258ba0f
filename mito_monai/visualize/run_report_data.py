"""What a run report shows beyond its history and final metrics, computed from the final model, and its file.

:class:`ReportData` holds plain arrays (per-slice IoU, calibration bins, example slices, the method's maps) and
is saved as one compressed ``.npz`` beside the run's other outputs, so a report can be drawn again later (or
from MLflow) without the model or the data.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mito_monai.io.errors import DataError
from mito_monai.metrics import binary_entropy, calibration_bins, ssl_metrics

__all__ = [
    "REPORT_DATA_FILE",
    "ReportData",
    "SliceStatistics",
    "agent_maps",
    "center_crop",
    "dualrel_maps",
    "pick_examples",
    "prototype_similarity",
]

#: file name of the report data inside a run's ``eval/`` folder
REPORT_DATA_FILE = "report_data.npz"
_SECTIONS = ("prototypes", "agents", "dualrel")


@dataclass
class ReportData:
    """Arrays for the report's figures; every field may be empty (that figure is then left out).

    Attributes:
        slice_iou: (Z,) IoU of every evaluated slice, in the evaluation order (empty without labels).
        slice_entropy: (Z,) mean prediction entropy of every evaluated slice, recorded when the evaluation had no
            labels (then ``slice_iou`` and ``calibration`` are empty).
        calibration: ``count``, ``correct``, ``confidence``: (num_bins,) calibration bins over the stack.
        examples: dicts with ``name``, ``index``, (H, W) ``image`` and ``prob``, and ``iou`` and (H, W) ``label``
            with labels, or ``entropy`` without.
        prototypes: R4MITO Fig. 5: ``image`` (H, W), ``similarity`` (2, H, W), ``tau``.
        agents: R4MITO Fig. 6: ``image`` (H, W), ``correlations`` (A, H, W), ``positions`` (A, 2),
            ``all_positions`` (K, 2).
        dualrel: ``image`` (H, W), ``activations`` (K, H, W), ``reliability`` (K,).
    """

    slice_iou: np.ndarray = field(default_factory=lambda: np.zeros(0))
    slice_entropy: np.ndarray = field(default_factory=lambda: np.zeros(0))
    calibration: dict[str, np.ndarray] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    prototypes: dict[str, Any] = field(default_factory=dict)
    agents: dict[str, Any] = field(default_factory=dict)
    dualrel: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        """Write a compressed ``.npz`` atomically (float maps as float16, labels as uint8)."""
        arrays: dict[str, np.ndarray] = {"slice_iou": np.asarray(self.slice_iou, dtype=np.float64)}
        if len(self.slice_entropy):
            arrays["slice_entropy"] = np.asarray(self.slice_entropy, dtype=np.float64)
        arrays.update({f"calibration.{k}": np.asarray(v, dtype=np.float64) for k, v in self.calibration.items()})
        arrays["examples.names"] = np.array([ex["name"] for ex in self.examples], dtype=str)
        for i, ex in enumerate(self.examples):
            arrays[f"examples.{i}.index"] = np.asarray(ex["index"])
            for score in ("iou", "entropy"):
                if score in ex:
                    arrays[f"examples.{i}.{score}"] = np.asarray(ex[score], dtype=np.float64)
            arrays[f"examples.{i}.image"] = np.asarray(ex["image"], dtype=np.float16)
            if "label" in ex:
                arrays[f"examples.{i}.label"] = np.asarray(ex["label"]).astype(np.uint8)
            arrays[f"examples.{i}.prob"] = np.asarray(ex["prob"], dtype=np.float16)
        for section in _SECTIONS:
            for key, value in getattr(self, section).items():
                value = np.asarray(value)
                arrays[f"{section}.{key}"] = value.astype(np.float16) if value.dtype.kind == "f" and value.ndim >= 2 else value
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReportData:
        """Read a file written by :meth:`save`.

        Raises:
            DataError: the file is not a report-data ``.npz``, naming the file.
        """
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError) as e:
            raise DataError(f"{path} is not a report-data file (.npz written by the run report): {e}") from None
        if "slice_iou" not in arrays:
            raise DataError(f"{path} is not a report-data file: it has no 'slice_iou' array.")
        data = cls(slice_iou=arrays["slice_iou"], slice_entropy=arrays.get("slice_entropy", np.zeros(0)))
        data.calibration = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("calibration.")}
        for i, name in enumerate(arrays.get("examples.names", [])):
            ex = {"name": str(name)}
            for key in ("index", "iou", "entropy", "image", "label", "prob"):
                if f"examples.{i}.{key}" not in arrays:
                    continue
                value = arrays[f"examples.{i}.{key}"]
                ex[key] = value.item() if value.ndim == 0 else value.astype(np.float32)
            data.examples.append(ex)
        for section in _SECTIONS:
            prefix = f"{section}."
            values = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            setattr(data, section, {k: (v.item() if v.ndim == 0 else v.astype(np.float32)) for k, v in values.items()})
        return data


class SliceStatistics:
    """Accumulates, over an evaluation run, each slice's IoU and the calibration bins of the whole stack, or, for
    slices without labels, each slice's mean prediction entropy (nats).

    Args:
        num_bins: calibration bins (15, as the ECE the metrics report).
        threshold: the mask is ``prob >= threshold``.
    """

    def __init__(self, num_bins: int = 15, threshold: float = 0.5) -> None:
        self.num_bins = num_bins
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self.iou: list[float] = []
        self.entropy: list[float] = []
        self.bins = None

    def update(self, prob: torch.Tensor, label: torch.Tensor | None) -> None:
        """Add a batch of whole slices: ``prob`` (B, 1, H, W) foreground probabilities, ``label`` (B, 1, H, W) binary,
        or None for slices without labels (their entropy is recorded instead; a run mixes neither)."""
        prob = torch.as_tensor(prob).detach().float()
        if label is None:
            if self.iou:
                raise ValueError("slices without labels after labelled ones: one evaluation is labelled or not.")
            self.entropy.extend(float(e) for e in binary_entropy(prob).flatten(1).mean(dim=1))
            return
        if self.entropy:
            raise ValueError("labelled slices after slices without labels: one evaluation is labelled or not.")
        label = torch.as_tensor(label).detach()
        if prob.dim() != 4 or prob.shape != label.shape:
            raise ValueError(f"expected prob and label of the same shape (B, 1, H, W), got {tuple(prob.shape)} and {tuple(label.shape)}.")
        for b in range(prob.shape[0]):
            self.iou.append(float(ssl_metrics(prob[b, 0], label[b, 0], threshold=self.threshold)["Jaccard"]))
        bins = calibration_bins(prob, label, num_bins=self.num_bins)
        self.bins = bins if self.bins is None else self.bins + bins

    def calibration(self) -> dict[str, np.ndarray]:
        """The accumulated bins as arrays (empty before any update)."""
        if self.bins is None:
            return {}
        return {k: getattr(self.bins, k).cpu().numpy() for k in ("count", "correct", "confidence")}


def pick_examples(iou: Sequence[float], names: Sequence[str] = ("best", "median", "worst")) -> list[tuple[str, int]]:
    """``[("best", i), ("median", j), ("worst", k)]``: slices of highest, median and lowest IoU (distinct when possible).

    Any score where higher is better works (e.g. minus the entropy, with ``names`` such as ``("most confident",
    "median", "least confident")``).
    """
    if len(names) != 3:
        raise ValueError(f"names must name the highest, median and lowest slice, got {names!r}.")
    iou = np.asarray(iou, dtype=np.float64)
    if iou.size == 0:
        return []
    order = np.argsort(-iou, kind="stable")
    picks, seen = [], set()
    for name, position in zip(names, (0, len(order) // 2, len(order) - 1)):
        index = int(order[position])
        if index not in seen:
            picks.append((name, index))
            seen.add(index)
    return picks


def center_crop(image: torch.Tensor, max_size: int, divisor: int) -> torch.Tensor | None:
    """The central square of ``image`` (..., H, W), at most ``max_size``, a multiple of ``divisor``; None if too small."""
    h, w = image.shape[-2:]
    size = (min(h, w, max_size) // divisor) * divisor
    if size < divisor:
        return None
    top, left = (h - size) // 2, (w - size) // 2
    return image[..., top : top + size, left : left + size]


def prototype_similarity(
    source_features: torch.Tensor, source_labels: torch.Tensor, target_features: torch.Tensor
) -> np.ndarray:
    """(2, H, W) cosine similarity of the target pixels to the source class prototypes (docs/design.md section 3.2 steps 1-2).

    Args:
        source_features: (B, C, Hs, Ws) features of labelled images.
        source_labels: (B, 1, Hs, Ws) their labels (0 background, 1 mitochondria).
        target_features: (1, C, H, W) features of one target image.
    """
    from mito_monai.losses.prototype import class_prototypes, cosine_similarity_map

    prototypes, _ = class_prototypes(source_features, source_labels, num_classes=2)
    return cosine_similarity_map(target_features, prototypes)[0].cpu().numpy()


def agent_maps(
    features: torch.Tensor,
    num_agents: int = 128,
    pool_stride: int = 4,
    temperature: float = 1.0,
    normalize: bool = False,
    strategy: str = "orthogonal",
    shown: int = 4,
) -> dict[str, np.ndarray]:
    """Agents of one feature map and every pixel's correlation to the first ``shown`` of them (docs/design.md section 3.3).

    The same pooling, selection and correlation as :class:`mito_monai.losses.AgentRelationLoss` (the weak view).

    Args:
        features: (1, C, H, W).
        num_agents, pool_stride, temperature, normalize, strategy: as for the loss.
        shown: agents whose correlation maps are returned (the first selected: the most mutually orthogonal).

    Returns:
        ``correlations`` (A, H, W) (nearest-upsampled from the pooled map), ``positions`` (A, 2) and
        ``all_positions`` (K, 2): (row, column) of the agents in image pixels (centres of their pooled cells).
    """
    from mito_monai.losses.agents import agent_relations

    relations = agent_relations(
        features, features, num_agents=num_agents, strategy=strategy, temperature=temperature,
        pool_stride=pool_stride, normalize=normalize,
    )
    gh, gw = relations.spatial_shape
    h, w = features.shape[-2:]
    corr = relations.log_corr_weak[0].exp()  # (N, K)
    indices = relations.indices[0].cpu().numpy()
    shown = min(shown, len(indices))
    maps = corr[:, :shown].T.reshape(shown, gh, gw).cpu().numpy()
    maps = np.repeat(np.repeat(maps, pool_stride, axis=1), pool_stride, axis=2)[:, :h, :w]
    rows, cols = np.divmod(indices, gw)
    positions = np.stack([np.minimum(rows * pool_stride + pool_stride / 2.0, h - 1), np.minimum(cols * pool_stride + pool_stride / 2.0, w - 1)], axis=1)
    return {"correlations": maps, "positions": positions[:shown], "all_positions": positions}


def dualrel_maps(network: torch.nn.Module, image: torch.Tensor, branch: int = 0) -> dict[str, np.ndarray]:
    """DualRel's activation maps of one branch and the prototype reliabilities on one image.

    Args:
        network: a :class:`mito_monai.networks.nets.DualRelNet`.
        image: (1, 1, H, W), H and W divisible by 32.
        branch: the branch whose activation maps are returned.

    Returns:
        ``activations`` (K, H, W) and ``reliability`` (K,).
    """
    out = network(image)
    return {
        "activations": out.branches[branch].activations[0].float().cpu().numpy(),
        "reliability": out.reliability[0].float().cpu().numpy(),
    }


def as_numpy_slice(x: Any) -> np.ndarray:
    """(H, W) float32 numpy array from a (1, 1, H, W), (1, H, W) or (H, W) tensor/array."""
    x = torch.as_tensor(x).detach().float().cpu()
    while x.dim() > 2:
        x = x[0]
    return x.numpy()


def section(data: Mapping[str, Any], *keys: str) -> bool:
    """Whether ``data`` holds every one of ``keys``."""
    return all(k in data for k in keys)
