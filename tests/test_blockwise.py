"""Block-wise inference: block plans, halo-correct results for any block grid, small slices, zarr output,
resume, no silent overwrite, and the Dask executor (a LocalCluster on 127.0.0.1) against one process."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import zarr
from monai.data.utils import dense_patch_slices
from monai.inferers import SlidingWindowInferer

from mito_monai.data import read_volume
from mito_monai.inference import BlockPlan, BlockSegmentation, StackSegmenter, window_starts
from mito_monai.networks.nets import MitoUNet


def _net(seed=0):
    torch.manual_seed(seed)
    return MitoUNet(channels=(4, 8)).eval()


def _zarr_input(path, shape=(5, 70, 90), seed=0):
    vol = np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)
    zarr.create_array(path, shape=shape, chunks=(2, 32, 32), dtype="u1")[:] = vol
    return vol


def test_block_plan_covers_every_voxel_once_and_clips_the_halo():
    plan = BlockPlan((5, 70, 90), (2, 32, 40), (0, 16, 16))
    count = np.zeros((5, 70, 90), int)
    for b in plan:
        count[b.core] += 1
        for c, r in zip(b.core, b.read):
            assert r.start == max(0, c.start - (16 if c is not b.core[0] else 0)) and r.stop <= 90
    assert len(plan) == 3 * 3 * 3 and (count == 1).all()
    assert plan[4].read[1] == slice(16, 70) and plan[4].read[2] == slice(24, 90)


def test_a_halo_larger_than_the_block_is_an_error_unless_one_block_spans_the_axis():
    with pytest.raises(ValueError, match=r"halo \(64\) is larger than the block \(32\) along y"):
        BlockPlan((1, 100, 100), (1, 32, 100), (0, 64, 64))
    assert len(BlockPlan((1, 30, 30), (1, 32, 32), (0, 256, 256))) == 1  # nothing beyond the volume: fine


@pytest.mark.parametrize("length,roi,overlap", [(90, 32, 0.5), (70, 32, 0.25), (32, 32, 0.5), (100, 24, 0.6)])
def test_window_lattice_is_monais(length, roi, overlap):
    interval = (max(1, int(roi * (1 - overlap))),)
    expected = sorted({s[0].start for s in dense_patch_slices((length,), (roi,), interval)})
    assert window_starts(length, roi, overlap) == expected


def test_one_slice_equals_monais_sliding_window_inferer():
    image = np.random.default_rng(1).random((70, 90)).astype(np.float32)
    inferer = SlidingWindowInferer((32, 32), sw_batch_size=3, overlap=0.5, mode="gaussian", padding_mode="reflect")
    seg = StackSegmenter(_net(), inferer=inferer)
    with torch.no_grad():
        ref = torch.softmax(inferer(torch.from_numpy(image)[None, None], seg.network), 1)[0, 1].numpy()
    np.testing.assert_allclose(seg.predict_slice(image), ref, atol=1e-5)


def test_two_block_grids_give_the_same_output(tmp_path):
    vol = _zarr_input(tmp_path / "in.zarr")
    seg = StackSegmenter(_net(), roi_size=(32, 32))
    runs = []
    for i, (slices, tile) in enumerate([(5, 4096), (2, 32), (3, 40)]):
        w = seg.run(tmp_path / "in.zarr", tmp_path / f"out{i}", output_format="zarr", block_slices=slices,
                    block_tile=tile, progress=False)
        runs.append((read_volume(w["probabilities"]), read_volume(w["masks"])))
    whole = np.stack([seg.predict_slice(s) for s in vol])
    for prob, mask in runs:
        np.testing.assert_allclose(prob, whole, atol=1e-5)
        np.testing.assert_array_equal(mask > 0, whole >= 0.5)
    assert json.loads((tmp_path / "out1" / "summary.json").read_text())["blocks"] == 3 * 3 * 3


def test_slices_smaller_than_the_window_just_work(tmp_path):
    vol = np.random.default_rng(2).integers(0, 255, (2, 64, 64), dtype=np.uint8)
    np.save(tmp_path / "x.npy", vol)
    zarr.create_array(tmp_path / "in.zarr", shape=vol.shape, dtype="u1")[:] = vol
    seg = StackSegmenter(_net(), roi_size=(256, 256))
    w = seg.run(tmp_path / "in.zarr", tmp_path / "out", output_format="tif", progress=False)
    prob = read_volume(w["probabilities"])
    assert prob.shape == (2, 64, 64) and np.isfinite(prob).all() and 0 <= prob.min() and prob.max() <= 1
    np.testing.assert_allclose(prob[1], seg.predict_slice(vol[1]), atol=1e-6)
    assert seg.predict_slice(vol[0, :1, :5]).shape == (1, 5)  # even a 1-pixel-high slice


def test_uint8_probabilities_channels_last_and_bfloat16(tmp_path):
    vol = _zarr_input(tmp_path / "in.zarr", shape=(2, 40, 40))
    ref = StackSegmenter(_net(), roi_size=(32, 32)).predict_slice(vol[0])
    fast = StackSegmenter(_net(), roi_size=(32, 32), amp=True, channels_last=True)
    assert np.abs(fast.predict_slice(vol[0]) - ref).max() < 0.05  # bfloat16 keeps ~3 significant digits
    w = fast.run(tmp_path / "in.zarr", tmp_path / "out", output_format="zarr", probabilities_dtype="uint8", progress=False)
    prob = read_volume(w["probabilities"])
    assert prob.dtype == np.uint8 and np.abs(prob[0] / 255.0 - ref).max() < 0.05


def test_existing_output_is_never_overwritten_without_overwrite(tmp_path):
    _zarr_input(tmp_path / "in.zarr", shape=(2, 32, 32))
    seg = StackSegmenter(_net(), roi_size=(32, 32))
    w = seg.run(tmp_path / "in.zarr", tmp_path / "out", output_format="zarr", progress=False)
    before = read_volume(w["probabilities"])
    with pytest.raises(FileExistsError, match=r"exists; pass overwrite=True \(--overwrite true\)"):
        seg.run(tmp_path / "in.zarr", tmp_path / "out", output_format="zarr", progress=False)
    np.testing.assert_array_equal(read_volume(w["probabilities"]), before)
    seg.run(tmp_path / "in.zarr", tmp_path / "out", output_format="zarr", overwrite=True, progress=False)


def test_resume_skips_finished_blocks_and_gives_the_uninterrupted_output(tmp_path, monkeypatch):
    _zarr_input(tmp_path / "in.zarr")
    seg = StackSegmenter(_net(), roi_size=(32, 32))
    kwargs = dict(output_format="zarr", block_slices=2, block_tile=32, progress=False)
    full = seg.run(tmp_path / "in.zarr", tmp_path / "full", **kwargs)
    original, calls = BlockSegmentation.__call__, []

    def interrupted(self, index):
        if len(calls) == 10:
            raise KeyboardInterrupt
        calls.append(index)
        return original(self, index)

    monkeypatch.setattr(BlockSegmentation, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        seg.run(tmp_path / "in.zarr", tmp_path / "cut", **kwargs)
    monkeypatch.setattr(BlockSegmentation, "__call__", lambda self, i: calls.append(i) or original(self, i))
    with pytest.raises(FileExistsError):  # without --resume the partial output is not touched
        seg.run(tmp_path / "in.zarr", tmp_path / "cut", **kwargs)
    with pytest.raises(ValueError, match="other settings.*threshold"):
        StackSegmenter(_net(), roi_size=(32, 32), threshold=0.4).run(tmp_path / "in.zarr", tmp_path / "cut", resume=True, **kwargs)
    resumed = seg.run(tmp_path / "in.zarr", tmp_path / "cut", resume=True, **kwargs)
    assert len(calls) == 27 and sorted(calls) == list(range(27))  # 10 before the interruption, 17 after
    for name in ("probabilities", "masks"):
        np.testing.assert_array_equal(read_volume(resumed[name]), read_volume(full[name]))
    summary = lambda d: json.loads((tmp_path / d / "summary.json").read_text())["foreground_fraction"]  # noqa: E731
    assert summary("cut") == summary("full")


def test_dask_needs_a_block_output_and_a_bad_address_fails_fast(tmp_path):
    _zarr_input(tmp_path / "in.zarr", shape=(1, 32, 32))
    seg = StackSegmenter(_net(), roi_size=(32, 32))
    with pytest.raises(ValueError, match="--output_format zarr"):
        seg.run(tmp_path / "in.zarr", tmp_path / "o", scheduler="dask")
    with pytest.raises(ValueError, match=r"no Dask scheduler answers at tcp://127\.0\.0\.1:1 within 5 s"):
        seg.run(tmp_path / "in.zarr", tmp_path / "o", output_format="zarr", scheduler="dask", dask_address="tcp://127.0.0.1:1")


@pytest.mark.parametrize("processes", [
    False,
    pytest.param(True, marks=pytest.mark.skipif(not os.environ.get("MITO_MONAI_DASK_PROCESSES"),
                                                reason="worker processes take ~30 s to start on 2 cores; set MITO_MONAI_DASK_PROCESSES=1")),
])
def test_dask_local_cluster_equals_one_process(tmp_path, processes):
    _zarr_input(tmp_path / "in.zarr")
    seg = StackSegmenter(_net(), roi_size=(32, 32))
    kwargs = dict(output_format="zarr", block_slices=2, block_tile=32, progress=False)
    one = seg.run(tmp_path / "in.zarr", tmp_path / "one", **kwargs)
    two = seg.run(tmp_path / "in.zarr", tmp_path / "two", scheduler="dask", dask_workers=2, dask_processes=processes, **kwargs)
    for name in ("probabilities", "masks"):
        np.testing.assert_array_equal(read_volume(two[name]), read_volume(one[name]))
    assert len(list((tmp_path / "two" / "blocks_done").glob("[0-9]*.json"))) == 27  # each worker recorded its blocks
