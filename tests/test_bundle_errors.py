"""What a bundle user reads when an input is wrong: one line on stderr and exit status 2, no traceback.

Every case goes through ``python -m monai.bundle run ...`` in a fresh process (the exit status is the
point), for training, evaluation and inference of both bundles: a missing dataset folder (or input stack),
an unreadable checkpoint, a slice with NaN pixels, and the mito_monai package missing. The processes run
two at a time, in a module fixture, since most of their time is Python importing torch and MONAI.
``MITO_MONAI_DEBUG=1`` brings the traceback back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from mito_monai.datasets import make_demo_data
from mito_monai.io import read_volume

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ("r4mito", "dualrel")
WORKFLOWS = {"training": "train.json", "evaluate": "evaluate.json", "inference": "inference.json"}
CASES = ("missing_data", "bad_checkpoint", "nan_slice", "missing_package")
# the message each case must print (a fragment of it)
EXPECTED = {
    "missing_data": "does not exist",
    "bad_checkpoint": "is not a readable PyTorch checkpoint",
    "nan_slice": "NaN",
    "missing_package": "the Python package mito_monai is not installed",
}
# small networks, so that the runs that get as far as building them stay cheap
NETWORKS = {
    "r4mito": {"channels": "[4,8,16,32]"},
    "dualrel": {"embed_dim": "8", "decoder_channels": "[8,8,8,8,8]", "num_filters": "4", "num_references": "4"},
}
# runs with mito_monai hidden, the way a zoo user without the package would start it
HIDE_PACKAGE = "import runpy, sys; sys.modules['mito_monai'] = None; runpy.run_module('monai.bundle', run_name='__main__')"


def _nan_copy(demo: Path, root: Path) -> Path:
    """The demo domains with every image slice as float32 TIFF, the first slice of each stack holding a NaN."""
    shutil.copytree(demo, root)
    for folder in (root / "source" / "stack1" / "raw", root / "target" / "Train_In", root / "target" / "Test_In"):
        for i, path in enumerate(sorted(folder.iterdir())):
            image = read_volume(path).astype(np.float32)
            if i == 0:
                image[0, 0] = np.nan
            path.unlink()
            tifffile.imwrite(path.with_suffix(".tif"), image)
    return root


def _weights(bundle: str, path: Path) -> Path:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "inference.json"))
    for key, value in NETWORKS[bundle].items():
        parser[key] = json.loads(value)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def _command(bundle: str, workflow: str, case: str, data: dict[str, Path]) -> list[str]:
    configs = REPO / "bundles" / bundle / "configs"
    dataset = data["nan"] if case == "nan_slice" else data["missing"] if case == "missing_data" else data["demo"]
    args = ["--config_file", str(configs / WORKFLOWS[workflow]), "--meta_file", str(configs / "metadata.json")]
    for key, value in NETWORKS[bundle].items():
        args += [f"--{key}", value]
    args += ["--dataset_dir", str(dataset)]
    ckpt = data["bad_ckpt"] if case == "bad_checkpoint" else data[f"{bundle}_ckpt"]
    if workflow == "training":
        args += ["--num_iterations", "1", "--epoch_length", "1", "--ckpt_dir", str(data["root"] / f"{bundle}_{case}")]
        if case == "bad_checkpoint":
            args += ["--resume", "true", "--ckpt_dir", str(data["bad_dir"])]
    else:
        args += ["--ckpt_path", str(ckpt), "--output_dir", str(data["root"] / f"out_{bundle}_{workflow}_{case}")]
    if workflow == "inference":
        args += ["--input_path", str(Path(dataset) / "target" / "Test_In")]
    python = [sys.executable, "-c", HIDE_PACKAGE] if case == "missing_package" else [sys.executable, "-m", "monai.bundle"]
    return python + ["run", workflow] + args


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[tuple[str, str, str], subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("errors")
    demo = make_demo_data(root / "demo", num_slices=16, size=64)  # 1/8 of 16 slices labels 2
    bad_dir = root / "bad_ckpt_dir"
    bad_dir.mkdir()
    (bad_dir / "checkpoint_iteration=1.pt").write_bytes(b"not a checkpoint")
    data = {
        "root": root,
        "demo": demo,
        "nan": _nan_copy(demo, root / "nan"),
        "missing": root / "no_such_folder",
        "bad_dir": bad_dir,
        "bad_ckpt": bad_dir / "checkpoint_iteration=1.pt",
    }
    for bundle in BUNDLES:
        data[f"{bundle}_ckpt"] = _weights(bundle, root / f"{bundle}.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MITO_MONAI_DEBUG": "", "PYTHONPATH": str(REPO)}
    jobs = [(b, w, c) for b in BUNDLES for w in WORKFLOWS for c in CASES]
    jobs.append(("r4mito", "inference", "debug"))

    def run(job):
        bundle, workflow, case = job
        if case == "debug":
            command, job_env = _command(bundle, workflow, "bad_checkpoint", data), {**env, "MITO_MONAI_DEBUG": "1"}
        else:
            command, job_env = _command(bundle, workflow, case, data), env
        return job, subprocess.run(command, capture_output=True, text=True, cwd=root, env=job_env, timeout=600)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, jobs))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("workflow", WORKFLOWS)
@pytest.mark.parametrize("bundle", BUNDLES)
def test_user_error_is_one_line_and_status_2(results, bundle, workflow, case):
    done = results[(bundle, workflow, case)]
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and EXPECTED[case] in errors[0], done.stderr[-2000:]


def test_debug_switch_shows_the_traceback(results):
    done = results[("r4mito", "inference", "debug")]
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "is not a readable PyTorch checkpoint" in done.stderr
