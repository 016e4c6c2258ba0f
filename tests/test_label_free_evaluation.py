"""Training on a target volume without labels: ``--target_eval_split none`` of the r4mito bundle.

- :class:`LabelFreeMetrics` equals a brute-force numpy computation (entropy, foreground fraction, agreement pooled
  over every pixel of several batches), resets, and reads logits from a MONAI evaluator whose batches have no label;
- :func:`evaluation_dataset`: images only with ``none``; a named split without labels is a one-line user error;
- a tiny source-free bundle run on a ``folder`` volume with no labels file completes, opens no label, writes
  ``model.pt`` and a ``final_metrics.json`` marked label-free whose scores match the selection handler's check of
  the final model, and draws its run report.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mito_monai.datasets import evaluation_dataset, evaluation_keys, evaluation_split_name, is_label_free
from conftest import exception_messages
from mito_monai.io.errors import DataError
from mito_monai.metrics import LabelFreeMetrics, evaluation_key_metric, probability_output
from mito_monai.metrics import SegmentationMetrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[1]


def _brute_force(ps: list[np.ndarray], qs: list[np.ndarray] | None = None, threshold: float = 0.5) -> dict:
    p = np.concatenate([x.ravel() for x in ps]).astype(np.float64)
    c = np.clip(p.astype(np.float32), 1e-6, 1 - 1e-6).astype(np.float64)
    out = {
        "entropy": float(np.mean(-(c * np.log(c) + (1 - c) * np.log(1 - c)))),
        "foreground_fraction": float(np.mean(p >= threshold)),
        "num_slices": sum(x.shape[0] for x in ps),
    }
    if qs is not None:
        q = np.concatenate([x.ravel() for x in qs])
        a, b = p >= threshold, q >= threshold
        out["agreement"] = 2.0 * np.sum(a & b) / (np.sum(a) + np.sum(b))
    return out


def _probabilities(seed: int, batch: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, size=(batch, 1, 5, 7)).astype(np.float32)
    p[0, 0, 0, :3] = (0.5, 0.0, 1.0)  # the threshold itself and the clamped extremes
    return p


def test_label_free_metric_equals_brute_force_over_batches_and_resets():
    ps = [_probabilities(s, b) for s, b in ((0, 2), (1, 3), (2, 1))]
    qs = [np.clip(p + np.random.default_rng(9).normal(0, 0.2, p.shape), 0, 1).astype(np.float32) for p in ps]
    metric = LabelFreeMetrics()
    for p in ps:
        metric.update(torch.from_numpy(p))
    expected = _brute_force(ps)
    result = metric.compute()
    assert set(result) == {"entropy", "foreground_fraction", "num_slices"}  # no agreement without copies
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-6), key

    metric.reset()
    for p, q in zip(ps, qs):
        metric.update((torch.from_numpy(p), torch.from_numpy(q)))
    expected = _brute_force(ps, qs)
    result = metric.compute()
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-6), key
    # a batch-level mean of the batch means would differ: the scores pool every pixel
    assert result["entropy"] != pytest.approx(np.mean([_brute_force([p])["entropy"] for p in ps]), rel=1e-6)

    metric.reset()
    metric.update(torch.from_numpy(ps[1]))
    assert metric.compute()["entropy"] == pytest.approx(_brute_force([ps[1]])["entropy"], rel=1e-6)
    metric.reset()
    with pytest.raises(Exception, match="at least one example"):
        metric.compute()


def test_label_free_metric_validation():
    with pytest.raises(ValueError, match="threshold"):
        LabelFreeMetrics(threshold=1.0)
    with pytest.raises(ValueError, match="metric_name"):
        LabelFreeMetrics(metric_name="IoU")
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        LabelFreeMetrics().update(torch.rand(2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        LabelFreeMetrics().update(torch.full((1, 1, 4, 4), 2.0))
    with pytest.raises(ValueError, match="same shape"):
        LabelFreeMetrics().update((torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 5)))
    with pytest.raises(TypeError, match="label_free"):
        evaluation_key_metric("none")
    assert isinstance(evaluation_key_metric(False)["IoU"], SegmentationMetrics)
    assert isinstance(evaluation_key_metric(True)["entropy"], LabelFreeMetrics)


def test_monai_evaluator_without_labels():
    """An evaluator of images only (``label`` is None in its output) publishes every label-free key."""
    from monai.data import DataLoader
    from monai.engines import SupervisedEvaluator

    logits = torch.randn(5, 2, 6, 6, generator=torch.Generator().manual_seed(3))
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader([{"image": x} for x in logits], batch_size=2),
        network=torch.nn.Identity(),  # the "image" already is the logits
        key_val_metric=evaluation_key_metric(True),
        decollate=False,
    )
    evaluator.run()
    expected = _brute_force([torch.softmax(logits, 1)[:, 1:2].numpy()])
    for key, value in expected.items():
        assert evaluator.state.metrics[key] == pytest.approx(value, rel=1e-6), key
    assert "IoU" not in evaluator.state.metrics
    assert probability_output({"pred": logits, "label": None}).shape == (5, 1, 6, 6)


def _ddp_worker(local_rank: int, p: torch.Tensor, out: dict) -> None:
    import ignite.distributed as idist

    rank, world = idist.get_rank(), idist.get_world_size()
    metric = LabelFreeMetrics()
    metric.update(p[:3] if rank == 0 else p[3:])  # uneven shards
    result = metric.compute()
    if rank == 0:
        out.update(result)
        out["world"] = world


def test_label_free_metric_distributed_gloo():
    import ignite.distributed as idist
    import torch.multiprocessing as mp

    p = _probabilities(4, 5)
    with mp.Manager() as manager:
        shared = manager.dict()
        with idist.Parallel(backend="gloo", nproc_per_node=2, start_method="fork") as parallel:
            parallel.run(_ddp_worker, torch.from_numpy(p), shared)
        out = dict(shared)
    assert out["world"] == 2
    for key, value in _brute_force([p]).items():
        assert out[key] == pytest.approx(value, rel=1e-6), key


# ------------------------------------------------------------------------------------------------------------
# the evaluation dataset and the bundle


def _volume_without_labels(root: Path, depth: int = 5, size: int = 64) -> Path:
    """``root/images.tif``: a small EM-like stack (dark blobs on a bright background), and no labels."""
    import tifffile

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    stack = np.full((depth, size, size), 180.0)
    for z in range(depth):
        for cy, cx in rng.uniform(8, size - 8, size=(4, 2)):
            stack[z][(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = 60.0
    stack += rng.normal(0, 10, stack.shape)
    root.mkdir(parents=True)
    tifffile.imwrite(root / "images.tif", np.clip(stack, 0, 255).astype(np.uint8))
    return root


def test_evaluation_dataset_without_labels_and_the_error_for_a_split_without_labels(tmp_path):
    from mito_monai.runtime import user_error_message

    root = _volume_without_labels(tmp_path / "my_volume")
    assert is_label_free("none") and is_label_free("None") and is_label_free(None) and not is_label_free("test")
    assert evaluation_keys("none") == ("image",) and evaluation_keys("test") == ("image", "label")
    assert evaluation_split_name("test", "train", 2) == "test"
    assert evaluation_split_name("none", "all", 2) == "all (unlabelled, every 2nd slice; label-free scores)"
    dataset = evaluation_dataset("folder", root, "none", "all", slice_step=2)
    assert [item["slice_index"] for item in dataset] == [0, 2, 4]
    assert all("label" not in item for item in dataset)
    with pytest.raises(DataError) as error:
        evaluation_dataset("folder", root, "all", "all")
    message = user_error_message(error.value)
    assert str(root) in message and "has no labels" in message and "root/labels" in message
    assert "--target_eval_split none" in message
    with pytest.raises(ValueError, match="slice_step"):
        evaluation_dataset("folder", root, "none", "all", slice_step=0)



@pytest.mark.parametrize("bundle", ["r4mito", "dualrel"])
def test_evaluate_config_names_a_split_without_labels(tmp_path, bundle):
    """evaluate.json scores against labels: on a volume without any, one clear error, not a KeyError from a transform."""
    from monai.bundle import ConfigParser

    from mito_monai.runtime import user_error_message

    root = _volume_without_labels(tmp_path / "my_volume")
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "evaluate.json"))
    parser["dataset"]["layout"], parser["dataset"]["root"], parser["eval_split"] = "folder", str(root), "all"
    with pytest.raises(Exception) as error:
        parser.get_parsed_content("dataset")
    cause = error.value
    while cause is not None and not isinstance(cause, DataError):
        cause = cause.__cause__ or cause.__context__
    assert isinstance(cause, DataError)
    message = user_error_message(cause)
    assert str(root) in message and "has no labels" in message and "inference.json" in message
    assert "--target_eval_split" not in message

TINY = {
    "channels": [4, 8, 16, 32], "crop_size": [32, 32], "batch_size": 2, "epoch_length": 2, "num_iterations": 4,
    "val_interval": 1, "log_interval": 1, "infer_roi": [64, 64], "amp": False,
}


def _run(tmp: Path, **overrides) -> None:
    from monai.bundle import run

    configs = REPO / "bundles" / "r4mito" / "configs"
    args = {**TINY, "ckpt_dir": str(tmp / "models"), "output_dir": f"$'{tmp / 'eval'}'"}
    run("training", config_file=str(configs / "train.json"), meta_file=str(configs / "metadata.json"),
        logging_file=False, **{**args, **overrides})


@pytest.fixture
def source_model(tmp_path) -> Path:
    from mito_monai.networks.nets import MitoUNet

    path = tmp_path / "source_model.pt"
    torch.save(MitoUNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16, 32)).state_dict(), path)
    # its card: the class prior a source-free run reads with --pseudo_label_prior source (the README's command)
    path.with_suffix(".json").write_text(json.dumps({"source_foreground_fraction": 0.05}))
    return path


def test_bundle_source_free_run_without_any_label(tmp_path, source_model, monkeypatch, capsys):
    import mito_monai.datasets.splits as splits

    volume = _volume_without_labels(tmp_path / "my_volume")
    opened = []
    original = splits.open_split

    def spy(name, root, split, *, with_label=True):
        opened.append((split, with_label))
        if with_label:
            raise AssertionError(f"a label of {root}:{split} was asked for")
        return original(name, root, split, with_label=with_label)

    monkeypatch.setattr(splits, "open_split", spy)
    no_source = tmp_path / "no_such_source"
    _run(tmp_path / "run", source_free=True, method="baseline", teacher="ema", bn_adaptation_batches=2,
         pseudo_label_prior="source", init_checkpoint=str(source_model), source_dir=str(no_source), target_layout="folder",
         target_dir=str(volume), target_train_split="all", target_eval_split="none",
         selection=True, selection_slice_step=2, report=True)
    assert opened and all(with_label is False for _, with_label in opened)
    assert not no_source.exists()
    assert (tmp_path / "run" / "models" / "model.pt").is_file()

    final = json.loads((tmp_path / "run" / "eval" / "final_metrics.json").read_text())
    assert final["labels_used"] is False and "label-free" in final["evaluation"]
    assert final["target"] == f"{volume}:all (unlabelled, every 2nd slice; label-free scores)"
    metrics = final["metrics"]
    assert set(metrics) == {"entropy", "foreground_fraction", "num_slices"}
    assert metrics["num_slices"] == 3  # slices 0, 2, 4 of 5
    assert 0.0 <= metrics["entropy"] <= np.log(2) + 1e-9 and 0.0 <= metrics["foreground_fraction"] <= 1.0
    # the selection handler's check of the final model predicted the same slices: the same scores
    last = final["selection"]["history"][-1]
    assert last["iteration"] == final["iteration"] == 4
    assert metrics["entropy"] == pytest.approx(last["entropy"], rel=1e-5, abs=1e-7)
    assert metrics["foreground_fraction"] == pytest.approx(last["foreground_fraction"], abs=1e-9)
    assert "IoU" not in final["selection"]["metrics"]

    printed = capsys.readouterr().out
    assert "label-free: no label was read" in printed
    assert not any(line.split("|")[0].strip() in ("IoU", "mAP", "Dice") for line in printed.splitlines() if "|" in line)
    history = [json.loads(line) for line in (tmp_path / "run" / "eval" / "history.jsonl").read_text().splitlines()]
    validation = [r["values"] for r in history if r["event"] == "validation"]
    assert validation and all("entropy" in v and "IoU" not in v for v in validation)
    page = (tmp_path / "run" / "eval" / "report" / "report.html").read_text()
    assert "Label-free evaluation: no label was read" in page and "UDA papers" not in page
    assert "alt='slices'" in page and "alt='validation'" in page


def test_bundle_named_eval_split_without_labels_is_a_clear_error(tmp_path, source_model):
    volume = _volume_without_labels(tmp_path / "my_volume")
    with pytest.raises(Exception) as error:
        _run(tmp_path / "run", source_free=True, method="baseline", init_checkpoint=str(source_model),
             target_layout="folder", target_dir=str(volume), target_train_split="all", target_eval_split="all",
             selection=False, report=False)
    message = exception_messages(error.value)
    assert f"{volume}: the evaluation split 'all' has no labels" in message
    assert "--target_eval_split none" in message
    assert not (tmp_path / "run" / "models" / "model.pt").exists()
