"""Tests of mito_monai.metrics against scikit-learn and brute-force references."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from sklearn.metrics import average_precision_score, f1_score, jaccard_score, matthews_corrcoef

from mito_monai.metrics import (
    CalibrationBins,
    SegmentationMetrics,
    average_precision,
    calibration_bins,
    expected_calibration_error,
    expected_calibration_error_from_bins,
    segmentation_metrics,
    ssl_metrics,
)


def _volume(seed: int = 0, shape=(6, 12, 14), levels: int | None = 10):
    """Random probabilities (quantised to create ties when ``levels``) and labels correlated with them, plus an
    all-background slice (0), an all-foreground slice (1) and a slice whose prediction is all background (2)."""
    rng = np.random.default_rng(seed)
    prob = rng.random(shape)
    if levels is not None:
        prob = np.round(prob * levels) / levels
    label = (prob + rng.normal(0, 0.3, shape) > 0.6).astype(np.uint8)
    label[0] = 0
    label[1] = 1
    prob[2] = np.minimum(prob[2], 0.3)
    return prob, label


def _sklearn_reference(prob: np.ndarray, label: np.ndarray, threshold: float = 0.5) -> dict:
    aps, f1s, mccs, ious = [], [], [], []
    for p, y in zip(prob, label):
        y, p = y.ravel(), p.ravel()
        pred = (p >= threshold).astype(int)
        if y.any():
            aps.append(average_precision_score(y, p))
        f1s.append(f1_score(y, pred, zero_division=1.0, labels=[0, 1]))
        with warnings.catch_warnings():  # single-class slices: sklearn warns, returns 0
            warnings.simplefilter("ignore")
            mccs.append(matthews_corrcoef(y, pred))
        ious.append(jaccard_score(y, pred, zero_division=1.0, labels=[0, 1]))
    return {
        "mAP": float(np.mean(aps)) if aps else float("nan"),
        "F1": float(np.mean(f1s)),
        "MCC": float(np.mean(mccs)),
        "IoU": float(np.mean(ious)),
        "num_slices": prob.shape[0],
        "num_slices_without_foreground": prob.shape[0] - len(aps),
    }


def _brute_force_ece(prob: np.ndarray, label: np.ndarray, num_bins: int) -> float:
    p, y = prob.ravel().astype(np.float64), label.ravel()
    total = 0.0
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    for b in range(num_bins):
        members = []
        for pi, yi in zip(p, y):
            pred = 1 if pi >= 0.5 else 0
            conf = pi if pred == 1 else 1.0 - pi
            inside = (edges[b] < conf <= edges[b + 1]) or (b == 0 and conf == 0.0)
            if inside:
                members.append((float(pred == yi), conf))
        if members:
            acc = sum(m[0] for m in members) / len(members)
            conf = sum(m[1] for m in members) / len(members)
            total += abs(acc - conf) * len(members) / len(p)
    return total


@pytest.mark.parametrize("levels", [None, 4, 10])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_matches_sklearn_with_ties(seed, levels):
    rng = np.random.default_rng(seed)
    prob = rng.random(300)
    if levels is not None:
        prob = np.round(prob * levels) / levels
    label = rng.random(300) < 0.3
    assert average_precision(prob, label) == pytest.approx(average_precision_score(label, prob), abs=1e-12)
    # torch input, 2D slice: same value
    value = average_precision(torch.as_tensor(prob.reshape(15, 20)), torch.as_tensor(label.reshape(15, 20)))
    assert value == pytest.approx(average_precision_score(label, prob), abs=1e-12)


def test_average_precision_degenerate():
    prob = np.array([0.2, 0.9, 0.4])
    assert math.isnan(average_precision(prob, np.zeros(3)))
    assert average_precision(prob, np.ones(3)) == pytest.approx(1.0)
    # all scores tied: one threshold, AP = prevalence
    assert average_precision(np.full(4, 0.5), np.array([1, 0, 0, 1])) == pytest.approx(0.5)


@pytest.mark.parametrize("levels", [None, 10])
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_uda_convention_match_sklearn(levels, threshold):
    prob, label = _volume(seed=3, levels=levels)
    got = segmentation_metrics(prob, label, threshold=threshold)
    ref = _sklearn_reference(prob, label, threshold)
    assert set(ref) <= set(got)
    for key in ("mAP", "F1", "MCC", "IoU"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key
    assert got["num_slices"] == 6
    assert got["num_slices_without_foreground"] == 1


def test_uda_convention_degenerate_slices():
    # slice 0: empty label, empty prediction -> F1 = IoU = 1 (zero_division=1), MCC = 0, no AP
    # slice 1: empty label, some false positives -> F1 = IoU = 0, MCC = 0
    # slice 2: all foreground, all predicted -> F1 = IoU = 1, MCC = 0 (zero denominator), AP = 1
    prob = np.zeros((3, 4, 4))
    prob[1, 0, 0] = 0.9
    prob[2] = 0.8
    label = np.zeros((3, 4, 4))
    label[2] = 1
    got = segmentation_metrics(prob, label)
    assert got["F1"] == pytest.approx((1 + 0 + 1) / 3)
    assert got["IoU"] == pytest.approx((1 + 0 + 1) / 3)
    assert got["MCC"] == 0.0
    assert got["mAP"] == pytest.approx(1.0)
    assert got["num_slices_without_foreground"] == 2
    ref = _sklearn_reference(prob, label)
    for key in ("F1", "IoU", "MCC", "mAP"):
        assert got[key] == pytest.approx(ref[key])
    # no foreground anywhere: mAP is NaN, not 0
    assert math.isnan(segmentation_metrics(prob, np.zeros_like(label))["mAP"])


def test_uda_convention_single_slice_2d():
    prob, label = _volume(seed=4)
    assert segmentation_metrics(prob[3], label[3]) == pytest.approx(segmentation_metrics(prob[3:4], label[3:4]))
    assert segmentation_metrics(prob[3], label[3])["num_slices"] == 1


def test_ssl_metrics_by_hand():
    prob = np.array([[[0.9, 0.6, 0.1], [0.2, 0.7, 0.4]], [[0.5, 0.0, 1.0], [0.3, 0.3, 0.8]]])
    label = np.array([[[1, 0, 0], [1, 1, 0]], [[1, 0, 0], [0, 0, 1]]])
    # prediction >= 0.5: [[1,1,0],[0,1,0]], [[1,0,1],[0,0,1]] -> TP = 4 (0,0,0)(0,1,1)(1,0,0)(1,1,2); FP = 2; FN = 1
    got = ssl_metrics(prob, label)
    assert got == pytest.approx({"Dice": 8 / (8 + 2 + 1), "Jaccard": 4 / (4 + 2 + 1)})
    assert ssl_metrics(np.zeros((2, 3)), np.zeros((2, 3))) == {"Dice": 1.0, "Jaccard": 1.0}
    assert ssl_metrics(np.zeros((2, 3)), np.ones((2, 3))) == {"Dice": 0.0, "Jaccard": 0.0}


@pytest.mark.parametrize("num_bins", [15, 4])
def test_ece_matches_brute_force(num_bins):
    rng = np.random.default_rng(5)
    prob = rng.random((2, 9, 11))
    prob[0, 0, :4] = [0.0, 1.0, 0.5, 0.25]
    label = rng.random((2, 9, 11)) < prob
    expected = _brute_force_ece(prob, label, num_bins)
    assert expected > 0
    assert expected_calibration_error(prob, label, num_bins=num_bins) == pytest.approx(expected, abs=1e-12)
    # the bins are additive: two halves summed give the same ECE
    bins = calibration_bins(prob[0], label[0], num_bins) + calibration_bins(prob[1], label[1], num_bins)
    assert isinstance(bins, CalibrationBins)
    assert float(bins.count.sum()) == prob.size
    assert expected_calibration_error_from_bins(bins) == pytest.approx(expected, abs=1e-12)


def test_ece_perfectly_calibrated_is_zero():
    # confidence 1 and always right
    assert expected_calibration_error(np.array([0.0, 1.0, 1.0]), np.array([0, 1, 1])) == 0.0


def test_segmentation_metrics_combines_both_conventions():
    prob, label = _volume(seed=6)
    got = segmentation_metrics(torch.as_tensor(prob, dtype=torch.float32), torch.as_tensor(label))
    assert list(got) == [
        "mAP", "F1", "MCC", "IoU", "Dice", "Jaccard", "ECE", "num_slices", "num_slices_without_foreground"
    ]
    uda = _sklearn_reference(prob.astype(np.float32), label)
    ssl = ssl_metrics(prob.astype(np.float32), label)
    for key, value in {**uda, **ssl}.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert got["ECE"] == pytest.approx(expected_calibration_error(prob.astype(np.float32), label), abs=1e-12)
    pred = prob.astype(np.float32) >= 0.5
    assert got["Dice"] == pytest.approx(f1_score(label.ravel(), pred.ravel()))
    assert got["Jaccard"] == pytest.approx(jaccard_score(label.ravel(), pred.ravel()))


def test_validation_errors():
    prob = np.full((2, 3, 4), 0.5)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 3, 5\)"):
        segmentation_metrics(prob, np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        segmentation_metrics(prob * 3, np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ssl_metrics(prob - 1, np.zeros((2, 3, 4)))
    bad = prob.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ssl_metrics(bad, np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="binary"):
        segmentation_metrics(prob, np.full((2, 3, 4), 2))
    with pytest.raises(ValueError, match="dimensions"):
        segmentation_metrics(prob[None], np.zeros((1, 2, 3, 4)))
    with pytest.raises(ValueError, match="num_bins"):
        expected_calibration_error(prob, np.zeros((2, 3, 4)), num_bins=0)
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        average_precision("abc", np.zeros(3))


def _run_engine(metric: SegmentationMetrics, batches: list, name: str = "seg") -> dict:
    engine = Engine(lambda e, batch: batch)
    metric.attach(engine, name)
    engine.run(batches, max_epochs=1)
    return engine.state.metrics


def test_ignite_metric_equals_function_over_batches():
    prob, label = _volume(seed=7, shape=(7, 10, 9))
    p = torch.as_tensor(prob, dtype=torch.float32)[:, None]  # (Z, 1, H, W): slices as batch items
    y = torch.as_tensor(label)[:, None]
    batches = [(p[0:3], y[0:3]), (p[3:4], y[3:4, 0]), (p[4:7], y[4:7])]  # label with or without channel dim
    metrics = _run_engine(SegmentationMetrics(), batches)
    expected = segmentation_metrics(p[:, 0], y[:, 0])
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key
    assert "seg" not in metrics  # the dict is flattened, never stored as a non-scalar
    # compute() itself returns the Mapping
    metric = SegmentationMetrics()
    for batch in batches:
        metric.update(batch)
    assert metric.compute() == pytest.approx(expected)
    metric.reset()
    with pytest.raises(Exception, match="at least one example"):
        metric.compute()


def test_ignite_metric_name_and_prefix():
    prob, label = _volume(seed=8, shape=(4, 6, 6))
    batch = (torch.as_tensor(prob)[:, None], torch.as_tensor(label)[:, None])
    metrics = _run_engine(SegmentationMetrics(metric_name="mAP", prefix="target_"), [batch], name="val_map")
    expected = segmentation_metrics(prob, label)
    assert metrics["val_map"] == pytest.approx(expected["mAP"])
    assert metrics["target_IoU"] == pytest.approx(expected["IoU"])
    with pytest.raises(ValueError, match="metric_name"):
        SegmentationMetrics(metric_name="AUC")
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        SegmentationMetrics().update((torch.rand(2, 2, 4, 4), torch.zeros(2, 2, 4, 4)))


def test_monai_evaluator_key_metric():
    from monai.data import DataLoader
    from monai.engines import SupervisedEvaluator

    prob, label = _volume(seed=9, shape=(5, 8, 8))
    data = [
        {"image": torch.as_tensor(prob[i : i + 1], dtype=torch.float32), "label": torch.as_tensor(label[i : i + 1])}
        for i in range(5)
    ]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=2),
        network=torch.nn.Identity(),  # the "image" already is the foreground probability
        key_val_metric={"IoU": SegmentationMetrics()},
    )
    evaluator.run()
    expected = segmentation_metrics(prob.astype(np.float32), label)
    for key, value in expected.items():
        assert evaluator.state.metrics[key] == pytest.approx(value, abs=1e-12), key
    assert evaluator.state.key_metric_name == "IoU"
    assert evaluator.state.best_metric == pytest.approx(expected["IoU"])
    assert evaluator.state.best_metric_epoch == 1


def _ddp_worker(local_rank: int, prob: torch.Tensor, label: torch.Tensor, out: dict) -> None:
    import ignite.distributed as idist

    rank, world = idist.get_rank(), idist.get_world_size()
    # uneven shards: rank 0 gets 3 slices, rank 1 gets 2
    shard = slice(0, 3) if rank == 0 else slice(3, 5)
    metric = SegmentationMetrics()
    metric.update((prob[shard, None], label[shard, None]))
    result = metric.compute()
    if rank == 0:
        out.update(result)
        out["world"] = world


def test_ignite_metric_distributed_gloo():
    import ignite.distributed as idist
    import torch.multiprocessing as mp

    prob, label = _volume(seed=10, shape=(5, 6, 7))
    prob_t, label_t = torch.as_tensor(prob), torch.as_tensor(label)
    with mp.Manager() as manager:
        shared = manager.dict()
        with idist.Parallel(backend="gloo", nproc_per_node=2, start_method="fork") as parallel:
            parallel.run(_ddp_worker, prob_t, label_t, shared)
        out = dict(shared)
    assert out["world"] == 2
    expected = segmentation_metrics(prob, label)
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, abs=1e-12), key


def test_validation_in_chunks_sees_every_chunk(monkeypatch):
    """Validation runs chunk by chunk: a bad value in the last chunk, or a range that only the chunks together
    exceed, is still caught."""
    import mito_monai.metrics.segmentation as seg

    monkeypatch.setattr(seg, "_MAX_CHUNK_VOXELS", 7)
    prob = np.full((3, 5, 5), 0.5, dtype=np.float32)
    label = np.zeros((3, 5, 5), dtype=np.uint8)
    label[0, 0, 0] = 1
    seg.segmentation_metrics(prob, label)  # valid input passes every chunk
    bad = prob.copy()
    bad[-1, -1, -1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        seg.segmentation_metrics(bad, label)
    wide = prob.copy()
    wide[0, 0, 0], wide[-1, -1, -1] = -0.25, 1.5
    with pytest.raises(ValueError, match=r"values in \[-0.25, 1.5\]"):
        seg.segmentation_metrics(wide, label)
    labels = label.copy()
    labels[-1, -1, -1] = 2
    with pytest.raises(ValueError, match="label must be binary"):
        seg.segmentation_metrics(prob, labels)
