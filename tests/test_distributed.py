"""Data-parallel training: gradient synchronisation through the trainer, rank-0-only outputs, launch errors.

The multi-process runs use ``torchrun`` with the gloo backend on CPU processes, the same code path
as NCCL on GPUs apart from the backend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mito_monai.runtime import init_distributed, is_main_process

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
CONFIGS = REPO / "bundles" / "r4mito" / "configs"


def _torchrun(args: list[str], cwd: Path, log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    res = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    log.write_text(res.stdout)
    assert res.returncode == 0, res.stdout[-4000:]


def test_init_distributed_outside_torchrun_says_how_to_launch(monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match="torchrun --nproc_per_node"):
        init_distributed()
    with pytest.raises(ValueError, match="timeout_minutes"):
        init_distributed(timeout_minutes=0)
    assert is_main_process()


def test_two_processes_take_the_single_process_step_on_the_whole_batch(tmp_path):
    """Two ranks with half a batch each (different initial weights, DDP broadcasts rank 0's) end with
    the weights of one process trained on the whole batch: the source and strong-view forwards both
    pass through DDP before the one backward, and their gradients are averaged over the ranks."""
    from ddp_worker import build_trainer
    from test_engines import TinyNet

    _torchrun([str(TESTS / "ddp_worker.py"), str(tmp_path / "rank")], REPO, tmp_path / "log.txt")
    torch.manual_seed(0)
    reference = TinyNet()
    initial = {k: v.clone() for k, v in reference.state_dict().items()}
    build_trainer(reference, rank=0, world=1).run()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name, expected in reference.state_dict().items():
        assert not torch.allclose(expected, initial[name])
        for state in ranks:
            torch.testing.assert_close(state[name], expected, rtol=1e-5, atol=1e-6)


def test_multi_gpu_bundle_config_on_two_cpu_processes(tmp_path):
    """``multi_gpu_train.json`` over ``train.json``: both ranks train, rank 0 alone writes model.pt
    (without DDP's ``module.`` prefix), the periodic checkpoint and the final metrics."""
    from mito_monai.datasets import make_demo_data
    from mito_monai.networks.nets import MitoUNet

    demo = make_demo_data(tmp_path / "demo", num_slices=3, size=128)
    tiny = {
        "channels": "[4,8,16,32]", "crop_size": "[32,32]", "batch_size": "2", "epoch_length": "2",
        "num_iterations": "2", "val_interval": "1", "num_agents": "8", "agent_pool_stride": "2",
        "infer_roi": "[64,64]",
    }
    configs = json.dumps([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")])
    args = ["-m", "monai.bundle", "run", "training", "--config_file", configs, "--meta_file", str(CONFIGS / "metadata.json"),
            "--dataset_dir", str(demo), "--ckpt_dir", str(tmp_path / "models"), "--output_dir", f"$'{tmp_path / 'eval'}'"]
    for key, value in tiny.items():
        args += [f"--{key}", value]
    _torchrun(args, REPO, tmp_path / "log.txt")
    log = (tmp_path / "log.txt").read_text()
    # the two ranks print at the same time, so their lines can interleave ("processprocess 1 of 2 ...")
    assert " 0 of 2 on " in log and " 1 of 2 on " in log
    assert log.count("final model (r4mito)") == 1  # rank 0 alone scores the final model
    record = json.loads((tmp_path / "eval" / "final_metrics.json").read_text())
    assert record["iteration"] == 2  # the metrics are checked against a one-process evaluation below
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    MitoUNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16, 32)).load_state_dict(state)
    ckpt = torch.load(tmp_path / "models" / "checkpoint_iteration=2.pt", weights_only=True)
    assert set(ckpt["model"]) == set(state)

    # the two ranks scored 2 and 1 of the 3 test slices; the all-reduced figures are those of one
    # process scoring all three with the same model
    from monai.bundle import run

    run(
        "evaluate", config_file=str(CONFIGS / "evaluate.json"), meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False, dataset_dir=str(demo), ckpt_path=str(tmp_path / "models" / "model.pt"),
        output_dir=str(tmp_path / "single"), channels=[4, 8, 16, 32], infer_roi=[64, 64],
    )
    single = json.loads((tmp_path / "single" / "evaluation_metrics.json").read_text())["metrics"]
    assert single["num_slices"] == record["metrics"]["num_slices"] == 3
    assert single["num_slices_without_foreground"] == 0
    for key in ("F1", "MCC", "IoU", "Dice", "Jaccard"):
        assert record["metrics"][key] == pytest.approx(single[key], abs=1e-6), key
    # the ranking metrics see the last bits of the probabilities, which differ with the thread count
    # (the processes ran one thread each); a two-iteration model's scores are nearly tied
    for key in ("mAP", "ECE"):
        assert record["metrics"][key] == pytest.approx(single[key], abs=5e-3), key


# ------------------------------------------------------------------------------------------- DualRel (SSL)

DUALREL_CONFIGS = REPO / "bundles" / "dualrel" / "configs"


def test_two_processes_take_the_single_process_semi_supervised_step(tmp_path):
    """SemiSupervisedTrainer on a DDP-wrapped DualRelNet: for DualRel (both branches and the reliability head),
    CPS (no reliability head: find_unused_parameters) and Mean Teacher (branch 0 only, EMA teacher), two
    ranks with half the labelled and half the unlabelled batch each, started from different weights, end with
    the weights of one process trained on the whole batches."""
    from ddp_ssl_worker import METHODS, build_trainer, tiny_net

    _torchrun([str(TESTS / "ddp_ssl_worker.py"), str(tmp_path / "rank_")], REPO, tmp_path / "log.txt")
    for method in METHODS:
        reference = tiny_net((1, 2))
        initial = {k: v.clone() for k, v in reference.state_dict().items()}
        build_trainer(reference, method, rank=0, world=1).run()
        ranks = [torch.load(tmp_path / f"rank_{method}_{r}.pt", weights_only=True) for r in (0, 1)]
        changed = {name for name, value in reference.state_dict().items() if not torch.equal(value, initial[name])}
        assert any(n.startswith("branches.0.") for n in changed), method
        # the parts a method trains, and only those, moved
        assert any(n.startswith("branches.1.") for n in changed) == (method != "mean_teacher"), method
        assert any(n.startswith("reliability_head.") for n in changed) == (method == "dualrel"), method
        for name, expected in reference.state_dict().items():
            for state in ranks:
                torch.testing.assert_close(state[name], expected, rtol=1e-7, atol=1e-9, msg=f"{method}: {name}")


def test_dualrel_multi_gpu_bundle_config_on_two_cpu_processes(tmp_path):
    """dualrel's ``multi_gpu_train.json`` over ``train.json``: both ranks train DualRel, rank 0 alone writes
    model.pt (a DualRelNet state dict without DDP's ``module.`` prefix), prints the partition and scores the
    final model; the all-reduced figures are those of one process scoring the whole test stack."""
    from mito_monai.datasets import make_demo_data, partition_split

    demo = make_demo_data(tmp_path / "demo", num_slices=3, size=64)
    tiny = {
        "encoder_depth": "10", "embed_dim": "8", "decoder_channels": "[8,8,8,8,8]", "num_filters": "4",
        "num_references": "4", "crop_size": "[32,32]", "batch_size": "2", "epoch_length": "2",
        "num_iterations": "2", "val_interval": "100", "infer_roi": "[64,64]", "partition": "1/2",
    }
    configs = json.dumps([str(DUALREL_CONFIGS / "train.json"), str(DUALREL_CONFIGS / "multi_gpu_train.json")])
    args = ["-m", "monai.bundle", "run", "training", "--config_file", configs,
            "--meta_file", str(DUALREL_CONFIGS / "metadata.json"), "--dataset_dir", str(demo),
            "--ckpt_dir", str(tmp_path / "models"), "--output_dir", f"$'{tmp_path / 'eval'}'"]
    for key, value in tiny.items():
        args += [f"--{key}", value]
    _torchrun(args, REPO, tmp_path / "log.txt")
    log = (tmp_path / "log.txt").read_text()
    assert "process 0 of 2" in log and "process 1 of 2" in log
    labelled = list(partition_split("lucchi_pp", demo / "target", "train", "1/2", 0).labelled)
    assert log.count(f'"labelled_slices": {json.dumps(labelled)}') == 1  # printed once, by rank 0
    assert log.count("final model (dualrel") == 1
    record = json.loads((tmp_path / "eval" / "final_metrics.json").read_text())
    assert record["iteration"] == 2 and record["partition"]["labelled_slices"] == labelled
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state) and any(k.startswith("branches.1.") for k in state)

    from monai.bundle import run

    net = {k: json.loads(tiny[k]) for k in ("encoder_depth", "embed_dim", "decoder_channels", "num_filters",
                                             "num_references", "infer_roi")}
    run("evaluate", config_file=str(DUALREL_CONFIGS / "evaluate.json"), meta_file=str(DUALREL_CONFIGS / "metadata.json"),
        logging_file=False, dataset_dir=str(demo), ckpt_path=str(tmp_path / "models" / "model.pt"),
        output_dir=str(tmp_path / "single"), **net)
    single = json.loads((tmp_path / "single" / "evaluation_metrics.json").read_text())["metrics"]
    assert single["num_slices"] == record["metrics"]["num_slices"] == 3
    for key in ("Dice", "Jaccard", "IoU"):
        assert record["metrics"][key] == pytest.approx(single[key], abs=2e-3), key
