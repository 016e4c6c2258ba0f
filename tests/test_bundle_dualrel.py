"""End-to-end: the dualrel bundle trains each SSL method, resumes, evaluates and segments, with tiny overrides.

Also checks the config wiring (which terms each method switches on, the partition's labelled slices, the
learning-rate schedule and what a checkpoint holds), the bundle's metadata and network against MONAI's own
verifiers, and that ``--tracking mlflow`` records the partition and the terms (read back by
``python -m mito_monai compare``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mito_monai.datasets import make_demo_data, partition_split
from mito_monai.io import read_volume

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "dualrel" / "configs"

# network settings shared by train, evaluate and inference (they must match for the weights to load)
NET = {
    "encoder_depth": 10,
    "embed_dim": 8,
    "decoder_channels": [8, 8, 8, 8, 8],
    "num_filters": 4,
    "num_references": 4,
    "infer_roi": [64, 64],
}
TINY = {
    **NET,
    "crop_size": [64, 64],
    "batch_size": 2,
    "epoch_length": 1,
    "num_iterations": 2,
    "val_interval": 100,  # validation only through FinalEvaluation (the final model)
    "log_interval": 1,
}
METRIC_KEYS = ("Dice", "Jaccard", "ECE")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    # 16 slices per stack: the 1/8 partition labels 2 of the 16 training slices
    return make_demo_data(tmp_path_factory.mktemp("demo"), num_slices=16, size=64)


def _run(workflow: str, config: str, **overrides):
    from monai.bundle import run

    return run(
        workflow,
        config_file=str(CONFIGS / config),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,  # logging.conf streams to the sys.stdout of its time; pytest swaps it per test
        **overrides,
    )


def _train(tmp: Path, demo: Path, **overrides) -> dict:
    # output_dir as an expression: MONAI's --tracking builds the executed-config artifact path by
    # string concatenation onto the raw config value, which only works for an expression
    args = {**TINY, "dataset_dir": str(demo), "ckpt_dir": str(tmp / "models"), "output_dir": f"$'{tmp / 'eval'}'"}
    args.update(overrides)
    _run("training", "train.json", **args)
    return json.loads((tmp / "eval" / "final_metrics.json").read_text())


def _parser(demo: Path, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({**TINY, "dataset_dir": str(demo), **overrides})
    return parser


def _rescore(tmp: Path, demo: Path, **overrides) -> dict:
    """Dice, Jaccard and ECE of ``tmp/models/model.pt`` on the demo's test stack, computed here by brute force
    (voxel counts and a loop over the 15 confidence bins) from the validation inferer's probabilities."""
    parser = _parser(demo, **overrides)
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(tmp / "models" / "model.pt", weights_only=True))
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.network.eval()
    probs, labels = [], []
    with torch.no_grad():
        for batch in parser.get_parsed_content("validate#dataloader"):
            logits = parser.get_parsed_content("validate#inferer")(batch["image"].float(), evaluator.network)
            probs.append(torch.softmax(logits.float(), 1)[:, 1].numpy().ravel())
            labels.append(batch["label"].numpy().ravel() > 0)
    p, y = np.concatenate(probs).astype(np.float64), np.concatenate(labels)
    m = p >= 0.5
    tp, fp, fn = np.sum(m & y), np.sum(m & ~y), np.sum(~m & y)
    confidence, correct = np.maximum(p, 1 - p), m == y
    ece = 0.0
    for k in range(15):  # bins (k/15, (k+1)/15], 0 in the first
        inside = (confidence > k / 15) & (confidence <= (k + 1) / 15) | ((k == 0) & (confidence == 0))
        if inside.any():
            ece += abs(correct[inside].mean() - confidence[inside].mean()) * inside.sum() / p.size
    return {"Dice": 2 * tp / (2 * tp + fp + fn), "Jaccard": tp / (tp + fp + fn), "ECE": ece}


def _check_record(record: dict, method: str, iteration: int, demo: Path, partition: str = "1/8", seed: int = 0,
                  tmp: Path | None = None, **overrides):
    assert record["method"] == method and record["iteration"] == iteration
    for key in METRIC_KEYS:
        assert 0.0 <= record["metrics"][key] <= 1.0, key
    if tmp is not None:  # the recorded figures are those of the saved final model, recomputed independently
        reference = _rescore(tmp, demo, method=method, **overrides)
        for key in METRIC_KEYS:
            assert record["metrics"][key] == pytest.approx(reference[key], abs=2e-3), key
    expected = partition_split("lucchi_pp", demo / "target", "train", partition, seed)
    assert record["partition"] == json.loads(json.dumps(expected.as_dict()))
    assert record["partition"]["labelled_slices"] == list(expected.labelled)


@pytest.mark.parametrize("method", ["supervised", "mean_teacher", "cps"])
def test_baselines_train(tmp_path, demo, monkeypatch, capsys, method):
    monkeypatch.chdir(REPO)
    record = _train(tmp_path, demo, method=method)
    out = capsys.readouterr().out
    _check_record(record, method, 2, demo, tmp=tmp_path)
    labelled = partition_split("lucchi_pp", demo / "target", "train", "1/8", 0).labelled
    # the run's log names the labelled slices, and the final table says which convention it reports
    assert f'"labelled_slices": {json.dumps(list(labelled))}' in out
    assert f"final model ({method}, partition 1/8" in out and "Jaccard" in out and "SSL" in out

    state = torch.load(tmp_path / "models" / "checkpoint_iteration=2.pt", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer"} <= set(state)
    if method == "mean_teacher":
        # the EMA teacher is saved (so that a resumed run continues it) and was updated after each step
        assert int(state["teacher"]["n_averaged"]) == 2
    else:
        assert "teacher" not in state
    # model.pt is the DualRelNet's state dict (both branches), loadable without the single-branch wrapper
    weights = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("branches.1.") for k in weights) and not any(k.startswith("network.") for k in weights)


def test_dualrel_train_resume_evaluate_infer_and_mlflow(tmp_path, demo, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(REPO)
    record = _train(tmp_path, demo, method="dualrel", tracking="mlflow", experiment_name="tiny_dualrel")
    _check_record(record, "dualrel", 2, demo)
    models = tmp_path / "models"
    assert (models / "model.pt").is_file() and (models / "checkpoint_iteration=2.pt").is_file()

    # MLflow: the partition, the method and the term weights are run parameters; every term is logged
    import mlflow

    uri = "sqlite:///" + str(tmp_path / "eval" / "mlruns.db")
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny_dualrel").experiment_id])
    params = run.data.params
    labelled = list(partition_split("lucchi_pp", demo / "target", "train", "1/8", 0).labelled)
    assert params["method"] == "dualrel" and params["partition.partition"] == "1/8"
    assert params["partition.labelled_slices"] == str(labelled) and params["partition.num_labelled"] == "2"
    assert params["terms.rpc.enabled"] == "True" and params["terms.rpc.weight"] == "1.0"
    assert params["terms.div.weight"] == "0.05" and params["terms.cps.enabled"] == "False"
    for term in ("loss_sup", "loss_sup_1", "loss_rpc", "loss_div", "loss_div_1"):
        assert len(client.get_metric_history(run.info.run_id, term)) == 2, term
    for key in METRIC_KEYS:
        assert run.data.metrics[key] == pytest.approx(record["metrics"][key], abs=1e-6), key

    from mito_monai.cli import main
    from mito_monai.tracking import collect_runs

    (row,) = collect_runs("tiny_dualrel", uri, columns=METRIC_KEYS)
    assert row["method"] == "dualrel" and row["Jaccard"] == pytest.approx(record["metrics"]["Jaccard"], abs=1e-6)
    capsys.readouterr()
    main(["compare", "--experiment", "tiny_dualrel", "--tracking_uri", uri, "--columns", "Dice,Jaccard,ECE"])
    table = capsys.readouterr().out
    assert "| run | method | seed | Dice | Jaccard | ECE |" in table
    assert f"| dualrel | 0 | {100 * record['metrics']['Dice']:.1f} |" in table

    # resume: 2 more iterations from the checkpoint; the optimiser, the lr schedule and the iteration count continue
    # float32 from here on (the bundles default to bfloat16 autocast): the evaluation, evaluate.json and
    # inference.json then agree to 1e-6; their bfloat16 paths round at different places (~1e-4)
    record = _train(tmp_path, demo, method="dualrel", num_iterations=4, resume=True, amp=False)
    assert record["iteration"] == 4
    state = torch.load(models / "checkpoint_iteration=4.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 4 and state["lr_scheduler"]["last_epoch"] == 4
    # halved at 50/70/90 % of 4 iterations (after iterations 2, 2 and 3): three halvings by iteration 4
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.5**3)
    assert len(list(models.glob("model_*.pt"))) == 1  # the first model.pt was kept

    # evaluate.json scores models/model.pt exactly as the training's final evaluation did
    _run("evaluate", "evaluate.json", dataset_dir=str(demo), ckpt_path=str(models / "model.pt"),
         output_dir=str(tmp_path / "eval"), amp=False, **NET)
    evaluated = json.loads((tmp_path / "eval" / "evaluation_metrics.json").read_text())["metrics"]
    assert evaluated["num_slices"] == 16
    for key in ("Dice", "Jaccard", "ECE", "mAP", "IoU"):
        assert evaluated[key] == pytest.approx(record["metrics"][key], abs=1e-6), key

    # inference.json segments the test stack with the same window: scoring its probabilities gives the same figures
    seg_dir = tmp_path / "segmentation"
    _run("inference", "inference.json", dataset_dir=str(demo), ckpt_path=str(models / "model.pt"),
         output_dir=str(seg_dir), amp=False, **NET)
    prob = read_volume(seg_dir / "probabilities.tif")
    mask = read_volume(seg_dir / "masks.tif")
    assert prob.shape == mask.shape == (16, 64, 64) and prob.dtype == np.float32
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    np.testing.assert_array_equal(mask > 0, prob >= 0.5)
    assert (seg_dir / "summary.json").is_file() and list(seg_dir.glob("preview_z*.png"))

    from mito_monai.datasets import load_split
    from mito_monai.metrics import segmentation_metrics

    # --output_format zarr: one OME-Zarr store, the same probabilities
    _run("inference", "inference.json", dataset_dir=str(demo), ckpt_path=str(models / "model.pt"),
         output_dir=str(tmp_path / "seg_zarr"), output_format="zarr", amp=False, **NET)
    np.testing.assert_allclose(read_volume(tmp_path / "seg_zarr" / "segmentation.ome.zarr"), prob, atol=1e-6)

    _, label = load_split("lucchi_pp", demo / "target", "test")
    rescored = segmentation_metrics(prob, label)
    for key in ("Dice", "Jaccard", "ECE", "IoU"):
        assert rescored[key] == pytest.approx(evaluated[key], abs=1e-6), key


def test_methods_switch_terms_teacher_and_views(demo, monkeypatch):
    from torch.optim.swa_utils import AveragedModel

    from mito_monai.engines import method_terms

    monkeypatch.chdir(REPO)
    expected = {
        "supervised": set(),
        "mean_teacher": {"mt"},
        "cps": {"sup_1", "cps"},
        "dualrel": {"sup_1", "rpc", "div", "div_1"},
    }
    for method, terms in expected.items():
        assert set(method_terms(method)) == terms
        parser = _parser(demo, method=method)
        active = {name for name, term in parser.get_parsed_content("terms").items() if term.active}
        assert active == terms, method
        trainer = parser.get_parsed_content("train#trainer")
        teacher = parser.get_parsed_content("teacher")
        if method == "mean_teacher":
            # student on the strong view, EMA teacher on the weak view of the same crop
            assert isinstance(teacher, AveragedModel) and trainer.teacher is teacher
            assert (trainer.unlabelled_key, trainer.teacher_key) == ("image_strong", "image_weak")
            assert "teacher" in parser.get_parsed_content("checkpoint_objects")
        else:
            assert teacher is None and trainer.unlabelled_key == "image_weak"
            assert "teacher" not in parser.get_parsed_content("checkpoint_objects")

    # an ablation is one switch: CPS plus the reliable prototype consistency; DualRel without diversity
    parser = _parser(demo, method="cps", use_rpc=True)
    assert {n for n, t in parser.get_parsed_content("terms").items() if t.active} == {"sup_1", "cps", "rpc"}
    parser = _parser(demo, method="dualrel", use_div=False, use_div_1=False)
    assert {n for n, t in parser.get_parsed_content("terms").items() if t.active} == {"sup_1", "rpc"}
    # Table 4 without reliable prototype selection: plain prototype consistency, the reliability head not run
    rpc = _parser(demo, method="dualrel", rpc_use_reliability=False).get_parsed_content("terms")["rpc"]
    assert rpc.active and rpc.loss.use_reliability is False and list(rpc.inputs) == ["prototypes", "prototypes_1"]
    rpc = _parser(demo, method="dualrel").get_parsed_content("terms")["rpc"]
    assert rpc.loss.use_reliability is True and list(rpc.inputs) == ["prototypes", "prototypes_1", "reliability"]
    # under DDP every parameter is used only when rpc runs with its reliabilities
    for overrides, unused in (({}, False), ({"rpc_use_reliability": False}, True), ({"method": "cps"}, True)):
        parser = _parser(demo, **overrides)
        parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")])
        parser.update({**TINY, "dataset_dir": str(demo), **overrides})
        assert parser.get_parsed_content("network#find_unused_parameters") is unused, overrides

    # the weights of the paper
    terms = _parser(demo).get_parsed_content("terms")
    assert terms["cps"].weight == 1.5 and terms["rpc"].weight == 1.0 and terms["div"].weight == 0.05
    assert terms["rpc"].loss.reg_weight == 1.0


def test_partitions_and_schedule(demo, monkeypatch):
    monkeypatch.chdir(REPO)
    parser = _parser(demo, partition="1/4", partition_seed=3)
    expected = partition_split("lucchi_pp", demo / "target", "train", "1/4", 3)
    labelled = parser.get_parsed_content("train#dataset")
    unlabelled = parser.get_parsed_content("train#unlabelled_dataset")
    assert labelled.slices == list(expected.labelled) and len(labelled.slices) == 4
    assert unlabelled.slices == list(expected.unlabelled) and len(unlabelled.slices) == 12
    assert set(labelled.slices).isdisjoint(unlabelled.slices)
    assert [item["slice_index"] for item in labelled.data] == list(expected.labelled)
    # the partition seed follows the run's seed unless set
    assert parser.get_parsed_content("partition_info") == expected
    parser = _parser(demo, seed=5)
    assert parser.get_parsed_content("partition_info") == partition_split("lucchi_pp", demo / "target", "train", "1/8", 5)
    # --partition_sampling contiguous: the labelled slices are one block, the rest feed the unlabelled loader
    parser = _parser(demo, seed=5, partition="1/4", partition_sampling="contiguous")
    expected = partition_split("lucchi_pp", demo / "target", "train", "1/4", 5, "contiguous")
    assert parser.get_parsed_content("partition_info") == expected
    assert parser.get_parsed_content("train#dataset").slices == list(range(expected.labelled[0], expected.labelled[0] + 4))
    assert parser.get_parsed_content("train#unlabelled_dataset").slices == list(expected.unlabelled)
    # the two branches start from different, seed-derived initialisations
    net = parser.get_parsed_content("network")
    assert not torch.equal(net.branches[0].mito_filters, net.branches[1].mito_filters)
    again = _parser(demo, seed=5).get_parsed_content("network")
    assert torch.equal(net.branches[1].mito_filters, again.branches[1].mito_filters)

    # "full": every slice labelled; the unlabelled loader falls back to the same slices rather than being empty
    parser = _parser(demo, partition="full")
    assert parser.get_parsed_content("train#dataset").slices == list(range(16))
    assert parser.get_parsed_content("train#unlabelled_dataset").slices == list(range(16))

    # SGD (momentum 0.9, weight decay 5e-4); the lr is halved at 50/70/90 % of the iterations
    parser = _parser(demo, num_iterations=100, epoch_length=10)
    optimizer = parser.get_parsed_content("optimizer")
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert group["momentum"] == 0.9 and group["weight_decay"] == 5e-4
    scheduler = parser.get_parsed_content("lr_scheduler")
    assert sorted(scheduler.milestones.elements()) == [50, 70, 90] and scheduler.gamma == 0.5


def test_metadata_and_network_verify(monkeypatch):
    from monai.bundle import verify_metadata, verify_net_in_out

    monkeypatch.chdir(REPO)
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(REPO / "bundles" / "metadata_schema.json"))
    # network_def is DualRelInferenceNet: one branch's (B, 2, H, W) log-probabilities, DualRelNet's state dict
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        n=2,
        device="cpu",
        **{k: v for k, v in NET.items() if k != "infer_roi"},
    )


@pytest.mark.parametrize("method", ["dualrel", "mean_teacher"])
def test_resumed_run_equals_uninterrupted(tmp_path, demo, monkeypatch, method):
    """Stopped after epoch 1 and resumed through ``resume_training`` (shuffled loaders, every term of the method,
    the lr schedule, the EMA teacher of Mean Teacher): the final weights are the uninterrupted run's."""
    monkeypatch.chdir(REPO)
    from test_bundle import _stop_after_epoch_1

    stop = _stop_after_epoch_1(CONFIGS)  # the bundle's run list, stopped after epoch 1
    _train(tmp_path / "full", demo, method=method)
    _train(tmp_path / "split", demo, method=method, run=stop)
    state = torch.load(tmp_path / "split" / "models" / "checkpoint_iteration=1.pt", weights_only=True)
    assert {"random_state", "loss_terms"} <= set(state) and ("teacher" in state) == (method == "mean_teacher")
    _train(tmp_path / "split", demo, method=method, resume=True)
    full = torch.load(tmp_path / "full" / "models" / "model.pt", weights_only=True)
    resumed = torch.load(tmp_path / "split" / "models" / "model.pt", weights_only=True)
    assert full.keys() == resumed.keys()
    for key in full:
        np.testing.assert_allclose(resumed[key].double().numpy(), full[key].double().numpy(), atol=1e-6, err_msg=key)
    assert any(not torch.allclose(state["model"][k].double(), full[k].double(), atol=1e-6) for k in full)


def test_rampups_cps_mining_and_fast_defaults(demo, monkeypatch):
    """Every unsupervised term has its own ramp-up length (default: the shared rampup_iterations), CPS's
    hard-pixel mining is a switch (off by default), and bfloat16 autocast + channels-last are the defaults."""
    monkeypatch.chdir(REPO)
    terms = _parser(demo, num_iterations=40).get_parsed_content("terms")
    assert {n: t.rampup_iterations for n, t in terms.items()} == {
        "sup_1": 0, "mt": 10, "cps": 10, "rpc": 10, "div": 10, "div_1": 10,
    }
    assert terms["cps"].loss.ohem_threshold is None and terms["cps"].loss.min_kept == 0
    parser = _parser(demo, num_iterations=40, rampup_iterations=8, rampup_cps=0, rampup_rpc=20, rampup_div=4,
                     cps_ohem_threshold=0.7, cps_min_kept=100, use_cps=True)
    terms = parser.get_parsed_content("terms")
    assert {n: t.rampup_iterations for n, t in terms.items()} == {
        "sup_1": 0, "mt": 8, "cps": 0, "rpc": 20, "div": 4, "div_1": 4,
    }
    assert terms["cps"].loss.ohem_threshold == 0.7 and terms["cps"].loss.min_kept == 100
    assert terms["rpc"].weight_at(0) == pytest.approx(np.exp(-5.0)) and terms["rpc"].weight_at(20) == 1.0
    assert terms["cps"].weight_at(0) == terms["cps"].weight
    # the MLflow parameters are derived from the terms themselves
    logged = parser.get_parsed_content("train#mlflow_extras").params
    assert logged["terms.rpc.rampup_iterations"] == "20" and logged["terms.cps.ohem_threshold"] == "0.7"
    assert logged["terms.cps.min_kept"] == "100" and logged["terms.cps.loss"] == "CrossPseudoSupervisionLoss"

    # precision "auto": bfloat16 autocast + channels-last where the CPU computes bfloat16 natively, float32 elsewhere
    from mito_monai.runtime import precision as prec

    for native in (None, "avx512_bf16"):
        monkeypatch.setattr(prec, "cpu_native_bf16", lambda: native)
        parser = _parser(demo, num_iterations=40, device="$torch.device('cpu')")
        trainer = parser.get_parsed_content("train#trainer")
        assert trainer.amp == bool(native) and trainer.amp_dtype == (torch.bfloat16 if native else torch.float32)
        net = parser.get_parsed_content("network")
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1 and m.kernel_size[0] > 1)
        assert (conv.weight.stride(1) == 1) == bool(native)  # channels-last: unit stride between input channels
        inferer = parser.get_parsed_content("validate#inferer")  # MONAI's evaluator autocasts on CUDA only
        assert inferer.precision("cpu").amp == bool(native)
        assert parser.get_parsed_content("precision").as_dict()["dtype"] == ("bfloat16" if native else "float32")


def test_cpu_lucchi_pp_1_8_600_is_the_1200_protocol_at_600_iterations(monkeypatch):
    """The overlay after cpu_lucchi_pp_1_8_1200.json resolves to what ``--num_iterations 600`` on cpu_lucchi_pp_1_8_1200.json gives (the
    measured runs' command): 600 iterations, lr halved at 300 / 419 / 540, every term but CPS ramped over 150, CPS over all 600."""
    from monai.bundle import ConfigParser

    monkeypatch.chdir(REPO)
    files = [str(CONFIGS / "train.json"), str(CONFIGS / "protocols" / "cpu_lucchi_pp_1_8_1200.json")]
    keys = ("num_iterations", "max_epochs", "lr_scheduler#milestones", "crop_size", "encoder_depth", "partition",
            "cps_ohem_threshold", "cps_min_kept", "rampup_mt", "rampup_cps", "rampup_rpc", "rampup_div")
    overlay, override = ConfigParser(), ConfigParser()
    overlay.read_config(files + [str(CONFIGS / "protocols" / "cpu_lucchi_pp_1_8_600.json")])
    override.read_config(files)
    override["num_iterations"] = 600
    for key in keys:
        assert overlay.get_parsed_content(key, instantiate=False) == override.get_parsed_content(key, instantiate=False), key
    # int() of 0.7 * 600 in floating point is 419: the measured runs halved the lr there
    assert overlay.get_parsed_content("lr_scheduler#milestones", instantiate=False) == [300, 419, 540]
    assert overlay.get_parsed_content("rampup_rpc") == 150 and overlay.get_parsed_content("crop_size") == [256, 256]
    # CPS as the medical-image CPS code runs it (weight 0.1 ramped over the whole run, plain CE): no collapse
    cps = overlay.get_parsed_content("terms")["cps"]
    assert (cps.weight, cps.rampup_iterations, cps.loss.ohem_threshold, cps.loss.min_kept) == (0.1, 600, None, 0)


def test_partition_1_32_of_our_83_slice_copy(tmp_path, monkeypatch, capsys):
    """1/32 of an 83-slice training stack (our Lucchi++ copy): floor(83 / 32) = 2 labelled slices, listed
    in the run's first log line and in the MLflow / final_metrics partition record."""
    monkeypatch.chdir(REPO)
    demo = make_demo_data(tmp_path / "demo83", num_slices=83, size=64)
    parser = _parser(demo, partition="1/32", seed=1)
    info = parser.get_parsed_content("partition_info")
    assert info == partition_split("lucchi_pp", demo / "target", "train", "1/32", 1)
    assert len(info.labelled) == 2 and len(info.unlabelled) == 81
    assert parser.get_parsed_content("train#dataset").slices == list(info.labelled)
    assert sorted(parser.get_parsed_content("train#unlabelled_dataset").slices + list(info.labelled)) == list(range(83))
    parser.get_parsed_content("initialize")
    out = capsys.readouterr().out
    assert f'"partition": "1/32", "seed": 1, "num_labelled": 2, "num_unlabelled": 81, "labelled_slices": {json.dumps(list(info.labelled))}' in out
    # what MLflowRunExtras and FinalEvaluation record
    assert parser.get_parsed_content("train#mlflow_extras#params#partition") == info.as_dict()
    assert parser.get_parsed_content("train#handlers#5#extra#partition") == info.as_dict()
