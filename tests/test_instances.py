"""3D instances: block-wise labelling merged across block borders, and MitoEM-style AP against brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from mito_monai.cli import main
from mito_monai.io import DataError, read_volume, write_volume
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


def _dumbbell(shape=(20, 24, 44), radius=8, neck=1):
    """Two balls of ``radius`` whose centres lie 20 voxels apart along x, joined by a thin bar (half-width ``neck``)."""
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    c = (shape[0] // 2, shape[1] // 2)
    left = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - 11) ** 2 <= radius**2
    right = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - 31) ** 2 <= radius**2
    bar = (abs(z - c[0]) <= neck) & (abs(y - c[1]) <= neck) & (x >= 11) & (x <= 31)
    return left | right | bar, left, right


def test_watershed_splits_two_touching_balls_and_keeps_one_ball(tmp_path):
    mask, left, right = _dumbbell()
    write_volume(tmp_path / "m.tif", mask.astype(np.uint8) * 255)
    assert label_instances(tmp_path / "m.tif", tmp_path / "none.zarr")["instances"] == 1
    out = label_instances(tmp_path / "m.tif", tmp_path / "ws.zarr", split="watershed", block_shape=(7, 10, 9))
    got = read_volume(tmp_path / "ws.zarr")
    assert out["instances"] == 2 and out["components"] == 1 and out["split"] == 1
    assert set(np.unique(got)) == {0, 1, 2} and np.array_equal(got > 0, mask)
    # each ball's centre half lies in one instance, the two halves in different ones
    core_l = left & (np.arange(44) < 9)[None, None]
    core_r = right & (np.arange(44) > 33)[None, None]
    assert len(np.unique(got[core_l])) == len(np.unique(got[core_r])) == 1 and got[core_l][0] != got[core_r][0]
    ball = left.astype(np.uint8)
    write_volume(tmp_path / "ball.h5", ball)
    out = label_instances(tmp_path / "ball.h5", tmp_path / "ball.tif", split="watershed", block_shape=(4, 8, 8))
    assert out["instances"] == 1 and np.array_equal(read_volume(tmp_path / "ball.tif"), ball)


def test_watershed_does_not_depend_on_the_block_grid(tmp_path):
    rng = np.random.default_rng(3)
    mask = ndimage.gaussian_filter(rng.random((16, 48, 48)), 2.0) > 0.5  # blobs that touch each other
    write_volume(tmp_path / "m.tif", mask.astype(np.uint8))
    prob = ndimage.gaussian_filter(mask.astype(np.float32), 1.0)
    write_volume(tmp_path / "p.tif", prob)
    results = []
    for i, grid in enumerate([(64, 1024, 1024), (5, 16, 13), (3, 48, 7)]):
        for p in (None, tmp_path / "p.tif"):
            out = label_instances(tmp_path / "m.tif", tmp_path / f"w{i}{p is None}.zarr", split="watershed",
                                  probabilities=p, block_shape=grid, seed_height=1.0)
            results.append((p is None, out["instances"], read_volume(tmp_path / f"w{i}{p is None}.zarr")))
    components = ndimage.label(mask, structure=np.ones((3, 3, 3)))[1]
    for distance_only in (True, False):
        same = [r for r in results if r[0] == distance_only]
        assert same[0][1] > components  # something was split
        for _, n, labels in same[1:]:
            assert n == same[0][1] and _same_partition(labels, same[0][2])
        assert set(np.unique(same[0][2])) == set(range(same[0][1] + 1))


def test_watershed_anisotropic_voxel_size_and_bad_input(tmp_path, capsys):
    from mito_monai.io import create_ome_zarr_image

    # two 12-voxel cubes joined by a neck only 3 slices thick in z (full width in y): in voxels the neck is
    # 4 shallower than the cubes' centres (split); with z voxels 5x the y/x size it is as deep as they are
    slabs = np.zeros((16, 16, 40), np.uint8)
    slabs[2:14, 2:14, 2:16] = slabs[2:14, 2:14, 24:38] = slabs[7:10, 2:14, 16:24] = 1
    write_volume(tmp_path / "s.tif", slabs)
    assert label_instances(tmp_path / "s.tif", tmp_path / "iso.zarr", split="watershed")["instances"] == 2
    out = label_instances(tmp_path / "s.tif", tmp_path / "an.zarr", split="watershed", voxel_size="50,10,10")
    assert out["instances"] == 1
    array = create_ome_zarr_image(tmp_path / "s.zarr", "mask", slabs.shape, np.uint8, (8, 16, 16), (50.0, 10.0, 10.0), "nanometer")
    array[...] = slabs
    assert label_instances(tmp_path / "s.zarr", tmp_path / "meta.zarr", split="watershed")["instances"] == 1
    mask, _, _ = _dumbbell()
    write_volume(tmp_path / "m.tif", mask.astype(np.uint8))
    cases = [
        (["--split", "watersheds"], "split must be one of none, watershed"),
        (["--probabilities", str(tmp_path / "m.tif")], "only by split='watershed'"),
        (["--split", "watershed", "--seed_height", "0"], "seed_height must be > 0"),
        (["--split", "watershed", "--voxel_size", "1,2"], "voxel_size must be three positive numbers"),
        (["--split", "watershed", "--voxel_size", "a,b,c"], "voxel_size must be three numbers"),
    ]
    write_volume(tmp_path / "small.tif", np.zeros((2, 4, 4), np.float32))
    cases.append((["--split", "watershed", "--probabilities", str(tmp_path / "small.tif")], "have shape [2, 4, 4]"))
    for args, message in cases:
        with pytest.raises(SystemExit):
            main(["instances", "--masks", str(tmp_path / "m.tif"), "--output", str(tmp_path / "o.zarr"), *args])
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o.zarr").exists()
    main(["instances", "--masks", str(tmp_path / "m.tif"), "--output", str(tmp_path / "o.zarr"), "--split", "watershed"])
    assert json.loads(capsys.readouterr().out)["instances"] == 2
