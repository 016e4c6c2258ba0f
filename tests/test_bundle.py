"""End-to-end: the r4mito bundle trains, resumes, evaluates and segments, with tiny overrides.

Also checks the bundle's metadata and network against MONAI's own verifiers, and that
``--tracking mlflow`` records parameters, every loss term and the metrics (read back by
``python -m mito_monai compare``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mito_monai.datasets import make_demo_data
from mito_monai.io import read_volume

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "r4mito" / "configs"

TINY = {
    "channels": [4, 8, 16, 32],
    "crop_size": [32, 32],
    "batch_size": 2,
    "epoch_length": 2,
    "num_iterations": 4,
    "val_interval": 1,
    "log_interval": 1,
    "infer_roi": [64, 64],
    "num_agents": 8,
    "agent_pool_stride": 2,
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("demo"), num_slices=3, size=128)


def _run(workflow: str, config: str, **overrides):
    from monai.bundle import run

    return run(
        workflow,
        config_file=str(CONFIGS / config),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,  # logging.conf streams to the sys.stdout of its time; pytest swaps it per test
        **overrides,
    )


def _train(tmp: Path, demo: Path, **overrides):
    # output_dir as an expression: MONAI's --tracking builds the executed-config artifact path by
    # string concatenation onto the raw config value, which only works for an expression
    args = {**TINY, "dataset_dir": str(demo), "ckpt_dir": str(tmp / "models"), "output_dir": f"$'{tmp / 'eval'}'"}
    args.update(overrides)
    _run("training", "train.json", **args)
    return json.loads((tmp / "eval" / "final_metrics.json").read_text())


def test_train_resume_evaluate_infer(tmp_path, demo, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    record = _train(tmp_path, demo, method="r4mito")
    out = capsys.readouterr().out
    assert "final model (r4mito)" in out and "IoU" in out
    assert record["method"] == "r4mito" and record["iteration"] == 4
    assert {"mAP", "F1", "MCC", "IoU", "Dice", "Jaccard", "ECE"} <= set(record["metrics"])
    models = tmp_path / "models"
    assert (models / "model.pt").is_file() and (models / "checkpoint_iteration=4.pt").is_file()

    # resume: 2 more epochs from the checkpoint reach iteration 8, and the old model.pt is kept
    record = _train(tmp_path, demo, method="r4mito", num_iterations=8, resume=True)
    assert record["iteration"] == 8
    assert (models / "checkpoint_iteration=8.pt").is_file()
    assert len(list(models.glob("model_*.pt"))) == 1

    # evaluate the final model on the demo target's test stack
    _run(
        "evaluate", "evaluate.json", dataset_dir=str(demo), ckpt_path=str(models / "model.pt"),
        output_dir=str(tmp_path / "eval"), channels=TINY["channels"], infer_roi=TINY["infer_roi"],
    )
    evaluated = json.loads((tmp_path / "eval" / "evaluation_metrics.json").read_text())["metrics"]
    assert evaluated["num_slices"] == 3
    # the training's final report scored the same final model with the same window settings
    for key in ("mAP", "F1", "MCC", "IoU", "Dice", "Jaccard", "ECE"):
        assert record["metrics"][key] == pytest.approx(evaluated[key], abs=1e-6), key

    # segment the same stack with the same window settings: scoring the written probabilities must
    # give the evaluator's figures (both in float32 here: bfloat16 rounding depends on the batching)
    _run(
        "evaluate", "evaluate.json", dataset_dir=str(demo), ckpt_path=str(models / "model.pt"),
        output_dir=str(tmp_path / "eval32"), channels=TINY["channels"], infer_roi=TINY["infer_roi"], amp=False,
    )
    evaluated = json.loads((tmp_path / "eval32" / "evaluation_metrics.json").read_text())["metrics"]
    seg_dir = tmp_path / "segmentation"
    _run(
        "inference", "inference.json", dataset_dir=str(demo), ckpt_path=str(models / "model.pt"),
        output_dir=str(seg_dir), channels=TINY["channels"], infer_roi=TINY["infer_roi"], overlap=0.25, amp=False,
        max_window=0,  # 0 = none: the evaluator's fixed windows (inference grows them to the slice by default)
    )
    prob = read_volume(seg_dir / "probabilities.tif")
    mask = read_volume(seg_dir / "masks.tif")
    assert prob.shape == mask.shape == (3, 128, 128) and prob.dtype == np.float32
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    assert set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask > 0, prob >= 0.5)
    assert (seg_dir / "summary.json").is_file() and list(seg_dir.glob("preview_z*.png"))

    from mito_monai.datasets import load_split
    from mito_monai.metrics import segmentation_metrics

    _, label = load_split("lucchi_pp", demo / "target", "test")
    rescored = segmentation_metrics(prob, label)
    for key in ("mAP", "F1", "MCC", "IoU", "Dice", "Jaccard"):
        assert rescored[key] == pytest.approx(evaluated[key], abs=1e-6), key

    # the same command with --output_format zarr writes one OME-Zarr store with the same figures
    _run(
        "inference", "inference.json", dataset_dir=str(demo), ckpt_path=str(models / "model.pt"),
        output_dir=str(tmp_path / "seg_zarr"), channels=TINY["channels"], infer_roi=TINY["infer_roi"], overlap=0.25,
        output_format="zarr", block_tile=64, max_window=0, measure=True, amp=False,
    )
    np.testing.assert_allclose(read_volume(tmp_path / "seg_zarr" / "segmentation.ome.zarr"), prob, atol=1e-6)
    np.testing.assert_array_equal(read_volume(tmp_path / "seg_zarr" / "segmentation.ome.zarr" / "labels" / "mask"), mask)
    # --measure true: the mask's 3D instances and their table beside the outputs
    measured = pd.read_csv(tmp_path / "seg_zarr" / "measurements.csv")
    assert measured["voxels"].sum() == (mask > 0).sum() and {"mean_intensity", "mean_probability"} <= set(measured)
    assert measured["mean_probability"].min() >= 0.5  # every instance voxel is above the threshold

    # inference never overwrites earlier outputs unless asked
    before = (seg_dir / "probabilities.tif").read_bytes()
    with pytest.raises(Exception) as err:
        _run(
            "inference", "inference.json", dataset_dir=str(demo), ckpt_path=str(models / "model.pt"),
            output_dir=str(seg_dir), channels=TINY["channels"], infer_roi=TINY["infer_roi"],
        )
    assert "overwrite" in str(err.value) + str(err.value.__cause__)
    assert (seg_dir / "probabilities.tif").read_bytes() == before


def _stop_after_epoch_1(configs: Path) -> list[str]:
    """The bundle's own ``run`` list with a handler that stops training after epoch 1 (an interruption):
    everything else the run does before training (and so every random number it draws) is unchanged."""
    run = json.loads((configs / "train.json").read_text())["run"]
    stop = "$@train#trainer.add_event_handler(ignite.engine.Events.EPOCH_COMPLETED(once=1), lambda e: e.terminate())"
    return run[:-1] + [stop, run[-1]]


STOP_AFTER_EPOCH_1 = _stop_after_epoch_1(CONFIGS)


def _weights(path: Path) -> dict:
    import torch

    return torch.load(path, weights_only=True)


def test_resumed_r4mito_equals_uninterrupted(tmp_path, demo, monkeypatch):
    """Full R4MITO (every term, shuffled source and target loaders, EMA prototypes) stopped after epoch 1 and
    resumed through ``resume_training`` ends with the uninterrupted run's weights."""
    monkeypatch.chdir(REPO)
    settings = {"method": "r4mito", "prototype_ema": 0.9}
    _train(tmp_path / "full", demo, **settings)
    _train(tmp_path / "split", demo, **settings, run=STOP_AFTER_EPOCH_1)
    state = _weights(tmp_path / "split" / "models" / "checkpoint_iteration=2.pt")
    assert {"model", "optimizer", "trainer", "random_state", "loss_terms"} <= set(state)
    assert state["loss_terms"]["pro.loss.prototype_seen"].all()  # the EMA memory is in the checkpoint
    assert state["loss_terms"]["cf._extra_state"] == {"rampup_iterations": 2}
    record = _train(tmp_path / "split", demo, **settings, resume=True)
    assert record["iteration"] == 4
    full = _weights(tmp_path / "full" / "models" / "model.pt")
    resumed = _weights(tmp_path / "split" / "models" / "model.pt")
    assert full.keys() == resumed.keys()
    for key in full:
        np.testing.assert_allclose(resumed[key].double().numpy(), full[key].double().numpy(), atol=1e-6, err_msg=key)
    # and the interruption did change something: the weights after epoch 1 are not the final ones
    assert any(not np.allclose(state["model"][k].double(), full[k].double(), atol=1e-6) for k in full)


def test_resume_without_checkpoint_says_so(tmp_path, demo, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(Exception) as err:
        _train(tmp_path, demo, method="noadapt", resume=True)
    chain = [err.value]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    assert any("nothing to resume" in str(e) and str(tmp_path / "models") in str(e) for e in chain)


def test_oracle_trains_on_target_labels_and_noadapt_ignores_target(tmp_path, demo, monkeypatch):
    from monai.bundle import ConfigParser

    monkeypatch.chdir(REPO)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({**TINY, "dataset_dir": str(demo), "method": "oracle"})
    ds = parser.get_parsed_content("train#dataset")
    assert ds.layout == "lucchi_pp" and ds.split == "train"
    assert ds.image.shape == (3, 128, 128)
    np.testing.assert_array_equal(ds.image, read_volume(demo / "target" / "Train_In"))
    terms = parser.get_parsed_content("terms")
    assert not any(t.active for t in terms.values())
    parser.update({"method": "baseline", "use_rank": True})
    parser.parse(reset=True)
    active = sorted(k for k, t in parser.get_parsed_content("terms").items() if t.active)
    assert active == ["cf", "rank", "reg"]


def test_mlflow_tracking_and_compare(tmp_path, demo, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(REPO)
    _train(tmp_path, demo, method="baseline", tracking="mlflow", experiment_name="tiny")
    import mlflow

    uri = "sqlite:///" + str(tmp_path / "eval" / "mlruns.db")
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([exp.experiment_id])
    params = run.data.params
    assert params["method"] == "baseline" and params["terms.cf.weight"] == "0.1"
    assert params["terms.rank.enabled"] == "False"
    # the resolved precision is recorded, as in final_metrics.json
    from mito_monai.runtime import resolve_precision

    expected = resolve_precision(device="cpu", log=False)
    assert params["precision.dtype"] == expected.name and params["precision.amp"] == str(expected.amp)
    record = json.loads((tmp_path / "eval" / "final_metrics.json").read_text())
    assert record["precision"]["dtype"] == expected.name
    history = client.get_metric_history(run.info.run_id, "loss_cf")
    assert len(history) == 4
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 4
    assert "IoU" in run.data.metrics and "loss_reg" in run.data.metrics
    assert client.list_artifacts(run.info.run_id)  # the executed config

    from mito_monai.cli import main

    capsys.readouterr()
    main(["compare", "--experiment", "tiny", "--tracking_uri", uri, "--output", str(tmp_path / "table.csv")])
    table = capsys.readouterr().out
    assert "| run | method | seed | mAP |" in table and "| baseline | 0 |" in table
    rows = (tmp_path / "table.csv").read_text().splitlines()
    assert rows[0].startswith("run,method,seed,mAP") and len(rows) == 2


def test_metadata_and_network_verify(monkeypatch):
    from monai.bundle import verify_metadata, verify_net_in_out

    monkeypatch.chdir(REPO)
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(REPO / "bundles" / "metadata_schema.json"))
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        n=2,
        any=8,
        device="cpu",
        channels=[4, 8, 16, 32],
    )


def test_baseline_and_r4mito_runs_of_a_seed_are_paired(tmp_path, demo, monkeypatch):
    """docs/results.md reads per-seed baseline / R4MITO differences as paired: both draw the same batches (the
    agent selection is deterministic and no term draws random numbers); NoAdapt's batches differ from epoch 2 on."""
    import hashlib

    from ignite.engine import Events
    from monai.bundle import ConfigParser

    monkeypatch.chdir(REPO)
    seen = {}
    for method in ("noadapt", "baseline", "r4mito"):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "train.json"))
        parser.update({**TINY, "num_iterations": 6, "val_interval": 100, "dataset_dir": str(demo), "method": method,
                       "ckpt_dir": str(tmp_path / method), "output_dir": str(tmp_path / method)})
        parser.get_parsed_content("initialize")
        trainer = parser.get_parsed_content("train#trainer")
        hashes = seen.setdefault(method, [])
        trainer.add_event_handler(
            Events.ITERATION_STARTED,
            lambda e, h=hashes: h.append(hashlib.sha1(e.state.batch["image"].numpy().tobytes()).hexdigest()),
        )
        trainer.run()
    assert len(seen["r4mito"]) == 6 and seen["r4mito"] == seen["baseline"]
    assert seen["noadapt"][:2] == seen["baseline"][:2] and seen["noadapt"] != seen["baseline"]


@pytest.mark.parametrize(
    "overlay",
    ["vnc3_lucchi_subset1", "vnc3_lucchi_subset2", "vnc3_lucchi_pp_subset1", "vnc3_lucchi_pp_subset2",
     "mitoem_r_to_h", "mitoem_h_to_r"],
)
def test_paper_overlays_set_the_paper_agent_settings(overlay, monkeypatch):
    """A paper overlay builds the paper's agent losses (raw dot products, T = 1, summed KL); merging
    agents_recommended.json after it gives ours, the train.json defaults."""
    from monai.bundle import ConfigParser

    monkeypatch.chdir(REPO)
    protocols = CONFIGS / "protocols"

    def agent_loss(*files):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / "train.json"), *(str(protocols / f) for f in files)])
        return parser.get_parsed_content("agent_relation_loss")

    paper = agent_loss(f"{overlay}.json")
    assert (paper.normalize, paper.temperature, paper.entry_mean) == (False, 1.0, False)
    ours = agent_loss(f"{overlay}.json", "agents_recommended.json")
    default = agent_loss()
    assert (ours.normalize, ours.temperature, ours.entry_mean) == (True, 0.5, True)
    assert (default.normalize, default.temperature, default.entry_mean) == (True, 0.5, True)


def test_quickstart_trains_noadapt_then_adapts_it_and_prints_both(tmp_path, demo, monkeypatch, capsys):
    """``run quickstart``: a NoAdapt source stage, then that model adapted (warm start, the recommended recipe),
    both final models scored and printed side by side with the gain; the rows are the stages' final_metrics.json."""
    import torch

    monkeypatch.chdir(REPO)
    _run(
        "quickstart", "train.json", dataset_dir=str(demo), ckpt_dir=str(tmp_path / "trained"),
        output_dir=f"$'{tmp_path / 'eval'}'", quickstart_source_iterations=2, quickstart_adapt_iterations=2,
        method="baseline", amp=False,
    )
    out = capsys.readouterr().out
    source = json.loads((tmp_path / "eval" / "source" / "final_metrics.json").read_text())
    adapted = json.loads((tmp_path / "eval" / "final_metrics.json").read_text())
    summary = json.loads((tmp_path / "eval" / "two_stage.json").read_text())
    assert source["method"] == "noadapt" and adapted["method"] == "baseline"
    assert list(summary["rows"].values()) == [source["metrics"], adapted["metrics"]]
    assert summary["precision"]["dtype"] == "float32" and adapted["precision"]["amp"] is False
    lines = out.splitlines()
    gain = next(line for line in lines if line.startswith("gain"))
    iou_column = [c.strip() for c in next(line for line in lines if line.startswith("model")).split(" | ")].index("IoU")
    expected = 100 * (adapted["metrics"]["IoU"] - source["metrics"]["IoU"])
    assert float(gain.split(" | ")[iou_column]) == pytest.approx(expected, abs=0.051)
    assert any(line.startswith("NoAdapt (2 it.)") for line in lines)
    assert any(line.startswith("baseline (2 + 2 it. adapted)") for line in lines)
    # stage 2 started from the stage-1 model and trained on: both saved, and different
    first = torch.load(tmp_path / "trained" / "source" / "model.pt", weights_only=True)
    second = torch.load(tmp_path / "trained" / "model.pt", weights_only=True)
    assert first.keys() == second.keys() and any(not torch.equal(first[k], second[k]) for k in first)


def test_format_comparison_by_hand():
    from mito_monai.engines import format_comparison

    table = format_comparison({"a": {"IoU": 0.25, "F1": 0.5}, "bb": {"IoU": 0.375, "F1": 0.5}}, "t")
    assert table.splitlines() == [
        "t",
        "model |      F1 |     IoU",
        "------+---------+--------",
        "a     |    50.0 |    25.0",
        "bb    |    50.0 |    37.5",
        "gain  |    +0.0 |   +12.5",
    ]
    with pytest.raises(ValueError, match="at least one"):
        format_comparison({})
