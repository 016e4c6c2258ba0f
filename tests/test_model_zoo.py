"""The MONAI model zoo's own checks (its ``ci/verify_bundle.py``), offline, on both bundles.

The zoo's script, for a bundle folder: ``configs/metadata.json`` present, ``version`` a key of ``changelog``,
the metadata valid against the schema (``verify_metadata``; here the copy kept in ``bundles/``, since the
zoo downloads it), ``verify_net_in_out(net_id="network_def", config_file="configs/inference.json")``,
``ckpt_export(net_id="network_def", ckpt_file="models/model.pt")`` to TorchScript and, if present,
``torch.jit.load("models/model.ts")``. Its contribution guide adds ``LICENSE``, ``docs/README.md`` and no
file over 25 MB outside ``large_files.yml``. The checks run on a copy of each bundle (the export writes into
``models/``); a bundle that does not ship ``models/model.pt`` gets weights of its own ``network_def`` there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ("r4mito", "dualrel")
SCHEMA = REPO / "bundles" / "metadata_schema.json"
ZOO_MAX_FILE_BYTES = 25 * 1024 * 1024


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _network_def(bundle_path: Path) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_path / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle_path)
    return parser.get_parsed_content("network_def")


@pytest.fixture(scope="module", params=BUNDLES)
def bundle(request, tmp_path_factory) -> tuple[str, Path]:
    """(name, path of a copy of the bundle with models/model.pt)."""
    name = request.param
    path = tmp_path_factory.mktemp(name) / name
    shutil.copytree(REPO / "bundles" / name, path, ignore=shutil.ignore_patterns("eval", "trained", "runs", "*.ts"))
    weights = path / "models" / "model.pt"
    if not weights.is_file():
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(_network_def(path).state_dict(), weights)
    return name, path


def test_directory_license_readme_version_and_file_sizes(bundle):
    name, path = bundle
    source = REPO / "bundles" / name
    metadata = json.loads((source / "configs" / "metadata.json").read_text())
    for required in ("configs/metadata.json", "configs/inference.json", "LICENSE", "docs/README.md"):
        assert (source / required).is_file(), required
    assert metadata["version"] in metadata["changelog"]
    assert metadata["required_packages_version"]["mito_monai"] == _package_version()
    large = [p for p in source.rglob("*") if p.is_file() and p.stat().st_size > ZOO_MAX_FILE_BYTES]
    assert not large, f"files over 25 MB must go into large_files.yml: {large}"
    readme = (source / "docs" / "README.md").read_text()
    for section in (
        "Model Overview",
        "Data",
        "Training configuration",
        "Performance",
        "System configuration",
        "Limitations",
        "Citation",
        "References",
    ):
        assert f"## {section}" in readme, section


def _package_version() -> str:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_zoo_verify_bundle(bundle, monkeypatch):
    """The zoo's verify_metadata_format, verify_data_shape and verify_torchscript, with MONAI's own functions."""
    from monai.bundle import ckpt_export, verify_metadata, verify_net_in_out

    _, path = bundle
    monkeypatch.chdir(path)  # the zoo runs from its own checkout, not ours: bundle_root must not rely on it
    meta = str(path / "configs" / "metadata.json")
    config = str(path / "configs" / "inference.json")
    verify_metadata(meta_file=meta, filepath=str(SCHEMA))
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=config, bundle_root=str(path))
    ckpt_export(
        net_id="network_def",
        filepath=str(path / "models" / "verify_model.ts"),
        ckpt_file=str(path / "models" / "model.pt"),
        meta_file=meta,
        config_file=config,
        bundle_root=str(path),
    )
    exported = torch.jit.load(str(path / "models" / "verify_model.ts"))
    if (path / "models" / "model.ts").is_file():
        torch.jit.load(str(path / "models" / "model.ts"))

    # the exported model computes what the eager network with the same weights computes
    eager = _network_def(path).eval()
    eager.load_state_dict(torch.load(path / "models" / "model.pt", weights_only=True))
    torch.manual_seed(1)
    x = torch.rand(2, 1, 64, 96)
    with torch.no_grad():
        expected = eager(x)
        assert expected.shape == (2, 2, 64, 96)
        torch.testing.assert_close(exported(x), expected, rtol=1e-5, atol=1e-5)


def test_shipped_weights_fit_inference_network():
    """Both bundles ship weights (README: "models/model.pt ships with the bundle"), and they load strictly into
    the bundle's inference network_def (no silent key mismatch) and give finite, non-constant probabilities."""
    for name in BUNDLES:
        weights = REPO / "bundles" / name / "models" / "model.pt"
        assert weights.is_file(), f"{weights} is missing: the bundle's README and inference.json promise shipped weights"
        net = _network_def(REPO / "bundles" / name)
        net.load_state_dict(torch.load(weights, weights_only=True), strict=True)
        net.eval()
        with torch.no_grad():
            out = net(torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0)))
        logits = (out[0] if isinstance(out, (tuple, list)) else out).float()
        assert torch.isfinite(logits).all() and logits.std() > 0, name
