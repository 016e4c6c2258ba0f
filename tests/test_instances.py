"""3D instances: block-wise labelling merged across block borders, and MitoEM-style AP against brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from mito_monai.cli import main
from mito_monai.data import DataError, read_volume, write_volume
from mito_monai.inference.instances import label_instances
from mito_monai.metrics import instance_metrics


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Two label volumes describe the same instances (up to renumbering)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]], 1), axis=0)
    return len(pairs) == len(np.unique(pairs[:, 0])) == len(np.unique(pairs[:, 1]))


def _blobs(shape=(12, 40, 44), seed=0):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.52


@pytest.mark.parametrize("connectivity", [6, 26])
def test_blockwise_labelling_equals_whole_volume_labelling(tmp_path, connectivity):
    mask = _blobs()
    write_volume(tmp_path / "mask.tif", mask.astype(np.uint8) * 255)
    structure = ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)
    whole, n = ndimage.label(mask, structure=structure)
    out = label_instances(tmp_path / "mask.tif", tmp_path / f"i{connectivity}.zarr", connectivity=connectivity,
                          block_shape=(5, 16, 12))
    got = read_volume(tmp_path / f"i{connectivity}.zarr")
    assert out["instances"] == n > 5
    assert _same_partition(got, whole) and set(np.unique(got)) == set(range(n + 1))


def test_min_size_and_diagonal_touch_across_a_block_corner(tmp_path):
    mask = np.zeros((2, 8, 8), np.uint8)
    mask[0, 3, 3] = mask[1, 4, 4] = 1  # diagonal neighbours in three different blocks (z, y and x borders)
    mask[0, 0:2, 6:8] = 1  # an instance of 4 voxels
    write_volume(tmp_path / "m.h5", mask)
    out = label_instances(tmp_path / "m.h5", tmp_path / "a.tif", block_shape=(1, 4, 4))
    got = read_volume(tmp_path / "a.tif")
    assert out["instances"] == 2 and got[0, 3, 3] == got[1, 4, 4] != 0
    label_instances(tmp_path / "m.h5", tmp_path / "b.tif", block_shape=(1, 4, 4), connectivity=6)
    assert len(np.unique(read_volume(tmp_path / "b.tif"))) == 4  # 6-connectivity: the diagonal pair is two
    out = label_instances(tmp_path / "m.h5", tmp_path / "c.tif", block_shape=(1, 4, 4), min_size=3)
    assert out["instances"] == 1 and read_volume(tmp_path / "c.tif")[0, 3, 3] == 0
    with pytest.raises(DataError, match="already exists"):
        label_instances(tmp_path / "m.h5", tmp_path / "c.tif")


def _brute_force_ap(pred, label, scores, threshold):
    """AP by the definition, voxel masks and loops only (101-point interpolated precision, COCO/MitoEM)."""
    pids = [i for i in np.unique(pred) if i]
    lids = [i for i in np.unique(label) if i]
    order = sorted(range(len(pids)), key=lambda k: -scores[k])
    matched, hits = set(), []
    for k in order:
        p = pred == pids[k]
        best, best_iou = None, -1.0
        for j, lid in enumerate(lids):
            if j in matched:
                continue
            g = label == lid
            iou = (p & g).sum() / (p | g).sum()
            if iou > best_iou:
                best, best_iou = j, iou
        if best is not None and best_iou >= threshold:
            matched.add(best)
            hits.append(1)
        else:
            hits.append(0)
    prec = [sum(hits[: r + 1]) / (r + 1) for r in range(len(hits))]
    rec = [sum(hits[: r + 1]) / len(lids) for r in range(len(hits))]
    total = 0.0
    for t in np.linspace(0, 1, 101):
        total += max([p for p, r in zip(prec, rec) if r >= t], default=0.0)
    return total / 101


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_instance_ap_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    label, _ = ndimage.label(_blobs((6, 20, 20), seed))
    pred, _ = ndimage.label(ndimage.binary_dilation(label > 0) & (rng.random(label.shape) > 0.1) if seed else label > 0)
    prob = rng.random(label.shape)
    got = instance_metrics(pred, label, prob)
    ids = [i for i in np.unique(pred) if i]
    scores = [prob[pred == i].mean() for i in ids]
    for t, key in ((0.5, "AP50"), (0.75, "AP75")):
        assert got[key] == pytest.approx(_brute_force_ap(pred, label, scores, t), abs=1e-12)
    if seed == 0:
        assert got["AP50"] == got["AP75"] == 1.0  # the label itself


def test_hand_computed_ap():
    label = np.zeros((1, 4, 8), int)
    label[0, :, 0:2], label[0, :, 4:6] = 1, 2
    pred = np.zeros_like(label)
    pred[0, :, 0:2] = 5  # IoU 1 with instance 1
    pred[0, :3, 4:6] = 7  # IoU 0.75 with instance 2
    pred[0, :, 7] = 9  # a false positive
    prob = np.where(pred == 9, 0.9, 0.5)  # the false positive ranks first
    m = instance_metrics(pred, label, prob)
    # ranks: FP, TP, TP -> precision 0, 1/2, 2/3 at recall 0, 0.5, 1 -> envelope 2/3 everywhere
    assert m["AP50"] == pytest.approx(2 / 3) and m["AP75"] == pytest.approx(2 / 3)
    assert m["num_predicted"] == 3 and m["num_labelled"] == 2


def test_cli_instances_and_evaluate_instances(tmp_path, capsys):
    mask = _blobs()
    write_volume(tmp_path / "mask.tif", mask.astype(np.uint8))
    gt, _ = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    write_volume(tmp_path / "gt.tif", gt.astype(np.uint16))
    main(["instances", "--masks", str(tmp_path / "mask.tif"), "--output", str(tmp_path / "inst.zarr"), "--block_slices", "4"])
    assert json.loads(capsys.readouterr().out)["instances"] == gt.max()
    main(["evaluate", "--prediction", str(tmp_path / "inst.zarr"), "--label", str(tmp_path / "gt.tif"), "--instances", "true"])
    out = json.loads(capsys.readouterr().out)
    assert out["AP50"] == out["AP75"] == 1.0
    with pytest.raises(SystemExit):
        main(["instances", "--masks", str(tmp_path / "mask.tif"), "--output", str(tmp_path / "inst.zarr")])
    assert "already exists" in capsys.readouterr().err
