"""Export a bundle's trained network as a bioimage.io model package (model spec 0.5, via ``bioimageio.spec``).

The package holds the weights twice, as TorchScript (``torch.jit.script`` of the bundle's inference
``network_def``) and as a PyTorch state dict with the architecture named by import path
(``mito_monai.networks.nets.*``, so that format needs the ``mito_monai`` package); a test input (one EM
slice) and the test output the network gives for it; the preprocessing as the spec defines it
(``scale_range`` with percentiles 0 and 100 over the slice: the bundles' per-slice min-max normalisation
to [0, 1]); the postprocessing ``softmax`` over the channel axis (channel 1: mitochondria probability);
covers drawn by ``bioimageio.spec`` from the test tensors; the bundle README as documentation; citations
and the license. ``bioimageio.core.test_model`` on the package is how it is checked.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mito_monai.io.errors import DataError

__all__ = ["BUNDLE_CARDS", "BundleCard", "export_bioimageio", "resolve_bundle"]


@dataclass(frozen=True)
class BundleCard:
    """What the package says about a bundle's model beyond its configs: name, tags, citations, license.

    Attributes:
        name: the package's model name.
        divisor: H and W of the input must be multiples of it (the network's total stride).
        min_size: smallest input side the package advertises.
        license: SPDX id of the weights' license (see ``docs/data_license.txt``).
        cite: ``(text, doi, url)`` of each citation; one of doi / url is set.
        tags: bioimage.io tags.
        training_data: one line on the data the shipped weights were trained on.
    """

    name: str
    divisor: int
    min_size: int
    license: str
    cite: tuple[tuple[str, str | None, str | None], ...]
    tags: tuple[str, ...]
    training_data: str


_DATA_CITATIONS = {
    "vnc3": (
        "Gerhard, Funke, Martel, Cardona, Fetter: Segmented anisotropic ssTEM dataset of neural tissue, figshare "
        "2013 (VNC III)",
        "10.6084/m9.figshare.856713",
        None,
    ),
    "lucchi_pp": (
        "Casser, Kang, Pfister, Haehn: Fast mitochondria detection for connectomics, MIDL 2020 (Lucchi++ labels)",
        None,
        "https://arxiv.org/abs/1812.06024",
    ),
    "lucchi": (
        "Lucchi, Smith, Achanta, Knott, Fua: Supervoxel-based segmentation of mitochondria in EM image stacks "
        "with learned shape features, IEEE TMI 2012 (EPFL Hippocampus images)",
        None,
        "https://www.epfl.ch/labs/cvlab/data/data-em/",
    ),
}

BUNDLE_CARDS: dict[str, BundleCard] = {
    "r4mito": BundleCard(
        name="R4MITO mitochondria segmentation (VNC III to Lucchi++)",
        divisor=8,
        min_size=64,
        license="CC-BY-NC-SA-3.0",
        cite=(
            (
                "Chen, Sun, Li, Mai, Luo, Pan, Zhang: Alleviate and Mining: Rethinking Unsupervised Domain "
                "Adaptation for Mitochondria Segmentation from Pseudo-Label Perspective, AAAI 2025 (R4MITO)",
                None,
                "https://ojs.aaai.org/index.php/AAAI",
            ),
            _DATA_CITATIONS["vnc3"],
            _DATA_CITATIONS["lucchi_pp"],
            _DATA_CITATIONS["lucchi"],
        ),
        tags=("mitochondria", "electron-microscopy", "semantic-segmentation", "2d", "domain-adaptation", "pytorch"),
        training_data="VNC III stack1 (labelled source, ssTEM) and the Lucchi++ training stack (unlabelled target, FIB-SEM)",
    ),
    "dualrel": BundleCard(
        name="DualRel mitochondria segmentation (Lucchi++ 1-8 labelled)",
        divisor=32,
        min_size=64,
        license="Apache-2.0",
        cite=(
            (
                "Mai, Sun, Zhang, Xiong, Wu: DualRel: Semi-Supervised Mitochondria Segmentation from A Prototype "
                "Perspective, CVPR 2023",
                None,
                "https://openaccess.thecvf.com/CVPR2023",
            ),
            _DATA_CITATIONS["lucchi_pp"],
            _DATA_CITATIONS["lucchi"],
        ),
        tags=("mitochondria", "electron-microscopy", "semantic-segmentation", "2d", "semi-supervised", "pytorch"),
        training_data="the Lucchi++ training stack (FIB-SEM), 1/8 of its slices labelled, the rest unlabelled",
    ),
}


def resolve_bundle(bundle: str | os.PathLike) -> tuple[str, Path]:
    """``(name, folder)`` of a bundle given by name (``r4mito``, ``dualrel``: ``bundles/<name>`` under the
    working directory or this repository) or by the path of its folder."""
    candidates = [Path(bundle), Path("bundles") / str(bundle), Path(__file__).resolve().parents[2] / "bundles" / str(bundle)]
    for folder in candidates:
        if (folder / "configs" / "inference.json").is_file():
            name = folder.resolve().name
            if name not in BUNDLE_CARDS:
                raise ValueError(f"{folder}: unknown bundle {name!r}; expected one of {sorted(BUNDLE_CARDS)}.")
            return name, folder.resolve()
    raise FileNotFoundError(
        f"bundle {str(bundle)!r} not found: expected a name of {sorted(BUNDLE_CARDS)} or a bundle folder with "
        "configs/inference.json."
    )


def _network(folder: Path, overrides: dict[str, Any]) -> tuple[torch.nn.Module, str, str, dict[str, Any]]:
    """The bundle's inference ``network_def``, its class (module path, name) and its plain keyword arguments."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    parser["bundle_root"] = str(folder)
    for key, value in overrides.items():
        parser[key] = value
    target = parser.get("network_def")["_target_"]
    kwargs = {k: parser.get_parsed_content(f"network_def#{k}") for k in parser.get("network_def") if not k.startswith("_")}
    kwargs = json.loads(json.dumps(kwargs))  # plain YAML values: tuples -> lists
    module, _, callable_name = target.rpartition(".")
    return parser.get_parsed_content("network_def"), module, callable_name, kwargs


def _test_image(path: str | os.PathLike | None, divisor: int, size: int) -> np.ndarray:
    """(H, W) float32 test slice: the middle slice of ``path`` cropped to a multiple of ``divisor``, or a
    synthetic EM-like slice of the demo's target domain."""
    if path is None:
        from mito_monai.datasets.demo import TARGET_STYLE, render_domain

        image = render_domain(TARGET_STYLE, np.random.default_rng(0), 1, size)[0][0]
    else:
        from mito_monai.io import open_volume

        with open_volume(path) as volume:  # only the middle slice is read
            z = volume.shape[0] // 2
            image = volume.read((slice(z, z + 1), slice(None), slice(None)), check_finite=True)[0]
        h, w = (min(s, size) // divisor * divisor for s in image.shape)
        if h == 0 or w == 0:
            raise DataError(f"{path}: slice {image.shape} is smaller than {divisor} pixels")
        top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
        image = image[top : top + h, left : left + w]
    return np.asarray(image, dtype=np.float32)


def _reference_output(network: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """(1, 2, H, W) class probabilities: scale_range (0/100 percentiles, eps 1e-6), the network, softmax."""
    low, high = float(image.min()), float(image.max())
    scaled = (image - low) / (high - low + 1e-6)
    with torch.no_grad():
        logits = network(torch.from_numpy(scaled)[None, None])
    return torch.softmax(logits, dim=1).numpy().astype(np.float32)


def export_bioimageio(
    bundle: str | os.PathLike,
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    test_image: str | os.PathLike | None = None,
    test_size: int = 256,
    overrides: dict[str, Any] | None = None,
    authors: Sequence[str] = ("mito-monai contributors",),
    overwrite: bool = False,
) -> Path:
    """
    Write a bioimage.io model package (a ``.zip``) of a bundle's network with the weights of ``checkpoint``.

    Args:
        bundle: ``r4mito``, ``dualrel`` or the folder of one of them.
        checkpoint: the weights (a state dict, e.g. the bundle's ``models/model.pt``; a path relative to the
            bundle folder works too).
        output: the package file to write (``.zip``); an existing file is kept unless ``overwrite``.
        test_image: optional image file whose (middle) slice is the package's test input, centre-cropped to
            ``test_size`` and a multiple of the network's stride; default a synthetic EM-like slice.
        test_size: side of the test input.
        overrides: bundle config overrides for the network (e.g. ``{"channels": [4, 8, 16, 32]}``).
        authors: the package's authors.
        overwrite: replace an existing ``output``.

    Returns:
        the path of the package.

    Raises:
        FileNotFoundError: no such bundle or checkpoint. ValueError: an unreadable or unfitting checkpoint, or
        ``output`` exists.
    """
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as spec

    from mito_monai.runtime.checkpoint_files import load_checkpoint

    name, folder = resolve_bundle(bundle)
    card = BUNDLE_CARDS[name]
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file() and (folder / checkpoint).is_file():
        checkpoint = folder / checkpoint
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist: expected the bundle's trained weights.")
    output = Path(output)
    if output.exists() and not overwrite:
        raise ValueError(f"{output} exists; pass --overwrite true to replace it.")

    network, module, callable_name, kwargs = _network(folder, dict(overrides or {}))
    state = load_checkpoint(checkpoint, "cpu")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{checkpoint} does not fit the {name} network: {str(e).splitlines()[0]}") from e
    network.eval()

    image = _test_image(test_image, card.divisor, test_size)
    expected = _reference_output(network, image)
    metadata = json.loads((folder / "configs" / "metadata.json").read_text())

    with tempfile.TemporaryDirectory(prefix="mito_monai_bioimageio_") as tmp:
        tmp_path = Path(tmp)
        np.save(tmp_path / "test_input.npy", image[None, None])
        np.save(tmp_path / "test_output.npy", expected)
        torch.save(network.state_dict(), tmp_path / "weights.pt")
        torch.jit.script(network).save(str(tmp_path / "weights_torchscript.pt"))
        (tmp_path / "README.md").write_text((folder / "docs" / "README.md").read_text())

        space = {"min": card.min_size, "step": card.divisor}
        input_axes = [
            spec.BatchAxis(),
            spec.ChannelAxis(channel_names=[spec.Identifier("em")]),
            spec.SpaceInputAxis(id=spec.AxisId("y"), size=spec.ParameterizedSize(**space)),
            spec.SpaceInputAxis(id=spec.AxisId("x"), size=spec.ParameterizedSize(**space)),
        ]
        input_descr = spec.InputTensorDescr(
            id=spec.TensorId("image"),
            description="one grey EM slice (any range; scaled to [0, 1] per slice by the preprocessing)",
            axes=input_axes,
            test_tensor=spec.FileDescr(source=tmp_path / "test_input.npy"),
            data=spec.IntervalOrRatioDataDescr(type="float32"),
            preprocessing=[
                spec.ScaleRangeDescr(
                    kwargs=spec.ScaleRangeKwargs(
                        axes=[spec.AxisId("y"), spec.AxisId("x")], min_percentile=0.0, max_percentile=100.0
                    )
                )
            ],
        )
        output_axes = [
            spec.BatchAxis(),
            spec.ChannelAxis(channel_names=[spec.Identifier("background"), spec.Identifier("mitochondria")]),
            spec.SpaceOutputAxis(id=spec.AxisId("y"), size=spec.SizeReference(tensor_id=spec.TensorId("image"), axis_id=spec.AxisId("y"))),
            spec.SpaceOutputAxis(id=spec.AxisId("x"), size=spec.SizeReference(tensor_id=spec.TensorId("image"), axis_id=spec.AxisId("x"))),
        ]
        output_descr = spec.OutputTensorDescr(
            id=spec.TensorId("probabilities"),
            description="class probabilities, channel 1 mitochondria (threshold 0.5 for a mask)",
            axes=output_axes,
            test_tensor=spec.FileDescr(source=tmp_path / "test_output.npy"),
            data=spec.IntervalOrRatioDataDescr(type="float32"),
            postprocessing=[spec.SoftmaxDescr(kwargs=spec.SoftmaxKwargs(axis=spec.AxisId("channel")))],
        )
        pytorch_version = spec.Version(torch.__version__.split("+")[0])
        covers = spec.generate_covers([(input_descr, image[None, None])], [(output_descr, expected)])
        descr = spec.ModelDescr(
            name=card.name,
            description=metadata["description"],
            version=spec.Version(metadata["version"]),
            authors=[spec.Author(name=a) for a in authors],
            cite=[spec.CiteEntry(text=text, doi=doi, url=url) for text, doi, url in card.cite],
            license=spec.LicenseId(card.license),
            tags=list(card.tags),
            documentation=spec.FileDescr(source=tmp_path / "README.md"),
            covers=covers,
            inputs=[input_descr],
            outputs=[output_descr],
            weights=spec.WeightsDescr(
                pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
                    source=tmp_path / "weights.pt",
                    architecture=spec.ArchitectureFromLibraryDescr(
                        callable=spec.Identifier(callable_name), import_from=module, kwargs=kwargs
                    ),
                    pytorch_version=pytorch_version,
                ),
                torchscript=spec.TorchscriptWeightsDescr(
                    source=tmp_path / "weights_torchscript.pt", pytorch_version=pytorch_version
                ),
            ),
            attachments=[],
        )
        output.parent.mkdir(parents=True, exist_ok=True)
        if output.exists():
            output.unlink()
        return Path(save_bioimageio_package(descr, output_path=output))
