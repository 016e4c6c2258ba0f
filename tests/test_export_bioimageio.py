"""``python -m mito_monai export-bioimageio``: a bioimage.io model package that bioimageio.core's own test accepts.

For each bundle a small network of the bundle's inference ``network_def`` (random weights, the weights do not
matter to the format) is exported; ``bioimageio.core.test_model`` then loads the package, runs its test input
through the declared preprocessing, both weight formats (TorchScript and the state dict rebuilt from
``mito_monai.networks.nets``) and the postprocessing, and compares with the test output. The test output is
computed here by our own pipeline, so the test also checks that the package's pre/post-processing is ours.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SMALL = {
    "r4mito": {"channels": [4, 8, 16, 32]},
    "dualrel": {"embed_dim": 8, "decoder_channels": [8, 8, 8, 8, 8], "num_filters": 4, "num_references": 4},
}

pytest.importorskip("bioimageio.core")


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("bundle", sorted(SMALL))
def test_package_passes_bioimageio_core_test(bundle, tmp_path):
    from bioimageio.core import test_model
    from bioimageio.spec import load_model_description
    from monai.bundle import ConfigParser

    from mito_monai.export import export_bioimageio

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "inference.json"))
    for key, value in SMALL[bundle].items():
        parser[key] = value
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    torch.save(network.state_dict(), tmp_path / "model.pt")

    package = export_bioimageio(bundle, tmp_path / "model.pt", tmp_path / "model.zip", overrides=SMALL[bundle], test_size=96)
    summary = test_model(package)
    assert summary.status == "passed", summary.format()

    descr = load_model_description(package)
    assert {"torchscript", "pytorch_state_dict"} <= {f for f, w in descr.weights if w is not None}
    assert "scale_range" in [p.id for p in descr.inputs[0].preprocessing]
    assert "softmax" in [p.id for p in descr.outputs[0].postprocessing]
    assert descr.covers and descr.cite and str(descr.license)
    with zipfile.ZipFile(package) as zf:
        test_input = np.load(zf.open("test_input.npy"))
        test_output = np.load(zf.open("test_output.npy"))
    # the test output is softmax(network(min-max scaled input)): probabilities that sum to 1 over the channels
    assert test_input.shape[:2] == (1, 1) and test_output.shape == (1, 2, *test_input.shape[2:])
    np.testing.assert_allclose(test_output.sum(axis=1), 1.0, rtol=1e-5)
    scaled = (test_input - test_input.min()) / (test_input.max() - test_input.min() + 1e-6)
    with torch.no_grad():
        expected = torch.softmax(network(torch.from_numpy(scaled)), dim=1).numpy()
    np.testing.assert_allclose(test_output, expected, rtol=1e-5, atol=1e-6)


def test_cli_refuses_to_overwrite_and_names_missing_checkpoint(tmp_path, capsys):
    from mito_monai.cli import main

    existing = tmp_path / "model.zip"
    existing.write_bytes(b"keep me")
    with pytest.raises(SystemExit) as e:
        main(["export-bioimageio", "--bundle", "r4mito", "--checkpoint", str(tmp_path / "none.pt"), "--output", str(existing)])
    assert e.value.code == 2 and "none.pt does not exist" in capsys.readouterr().err
    torch.save(torch.nn.Linear(1, 1).state_dict(), tmp_path / "w.pt")
    with pytest.raises(SystemExit) as e:
        main(["export-bioimageio", "--bundle", "r4mito", "--checkpoint", str(tmp_path / "w.pt"), "--output", str(existing)])
    assert e.value.code == 2 and "exists" in capsys.readouterr().err
    assert existing.read_bytes() == b"keep me"
