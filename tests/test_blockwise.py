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

from conftest import tiny_unet
from mito_monai.io import read_volume
from mito_monai.inference import BlockPlan, BlockSegmentation, StackSegmenter, window_starts
from mito_monai.inference.block_plan import fitted_window
from mito_monai.networks.nets import MitoUNet


def _segmenter(*args, **kwargs) -> StackSegmenter:
    """A StackSegmenter in float32 (the references here are float32) unless a test chooses its precision."""
    return StackSegmenter(*args, **{"amp": False, **kwargs})


def _net(seed=0):
    return tiny_unet(seed).eval()


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
    seg = _segmenter(_net(), inferer=inferer)
    with torch.no_grad():
        ref = torch.softmax(inferer(torch.from_numpy(image)[None, None], seg.network), 1)[0, 1].numpy()
    np.testing.assert_allclose(seg.predict_slice(image), ref, atol=1e-5)


def test_two_block_grids_give_the_same_output(tmp_path):
    vol = _zarr_input(tmp_path / "in.zarr")
    seg = _segmenter(_net(), roi_size=(32, 32))
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
    seg = _segmenter(_net(), roi_size=(256, 256))
    w = seg.run(tmp_path / "in.zarr", tmp_path / "out", output_format="tif", progress=False)
    prob = read_volume(w["probabilities"])
    assert prob.shape == (2, 64, 64) and np.isfinite(prob).all() and 0 <= prob.min() and prob.max() <= 1
    np.testing.assert_allclose(prob[1], seg.predict_slice(vol[1]), atol=1e-6)
    assert seg.predict_slice(vol[0, :1, :5]).shape == (1, 5)  # even a 1-pixel-high slice


def test_uint8_probabilities_channels_last_and_bfloat16(tmp_path):
    vol = _zarr_input(tmp_path / "in.zarr", shape=(2, 40, 40))
    ref = _segmenter(_net(), roi_size=(32, 32)).predict_slice(vol[0])
    fast = _segmenter(_net(), roi_size=(32, 32), amp=True, channels_last=True)
    assert np.abs(fast.predict_slice(vol[0]) - ref).max() < 0.05  # bfloat16 keeps ~3 significant digits
    w = fast.run(tmp_path / "in.zarr", tmp_path / "out", output_format="zarr", probabilities_dtype="uint8", progress=False)
    prob = read_volume(w["probabilities"])
    assert prob.dtype == np.uint8 and np.abs(prob[0] / 255.0 - ref).max() < 0.05


def test_existing_output_is_never_overwritten_without_overwrite(tmp_path):
    _zarr_input(tmp_path / "in.zarr", shape=(2, 32, 32))
    seg = _segmenter(_net(), roi_size=(32, 32))
    w = seg.run(tmp_path / "in.zarr", tmp_path / "out", output_format="zarr", progress=False)
    before = read_volume(w["probabilities"])
    with pytest.raises(FileExistsError, match=r"exists; pass overwrite=True \(--overwrite true\)"):
        seg.run(tmp_path / "in.zarr", tmp_path / "out", output_format="zarr", progress=False)
    np.testing.assert_array_equal(read_volume(w["probabilities"]), before)
    seg.run(tmp_path / "in.zarr", tmp_path / "out", output_format="zarr", overwrite=True, progress=False)


def test_resume_skips_finished_blocks_and_gives_the_uninterrupted_output(tmp_path, monkeypatch):
    _zarr_input(tmp_path / "in.zarr")
    seg = _segmenter(_net(), roi_size=(32, 32))
    kwargs = dict(output_format="zarr", block_slices=2, block_tile=32, progress=False)
    full = seg.run(tmp_path / "in.zarr", tmp_path / "full", **kwargs)
    original, calls = BlockSegmentation.compute, []

    def interrupted(self, index, norm):
        if len(calls) == 10:
            raise KeyboardInterrupt
        calls.append(index)
        return original(self, index, norm)

    monkeypatch.setattr(BlockSegmentation, "compute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        seg.run(tmp_path / "in.zarr", tmp_path / "cut", **kwargs)
    monkeypatch.setattr(BlockSegmentation, "compute", lambda self, i, norm: calls.append(i) or original(self, i, norm))
    with pytest.raises(FileExistsError):  # without --resume the partial output is not touched
        seg.run(tmp_path / "in.zarr", tmp_path / "cut", **kwargs)
    with pytest.raises(ValueError, match="other settings.*threshold"):
        _segmenter(_net(), roi_size=(32, 32), threshold=0.4).run(tmp_path / "in.zarr", tmp_path / "cut", resume=True, **kwargs)
    # another checkpoint, network, precision or window: refused, one line naming exactly what differs
    amp = seg.precision.amp
    others = {
        "checkpoint": _segmenter(_net(seed=1), roi_size=(32, 32), amp=amp),
        "precision": _segmenter(_net(), roi_size=(32, 32), amp=not amp),
        "window": _segmenter(_net(), roi_size=(16, 16), amp=amp),
    }
    torch.manual_seed(0)
    others["network"] = _segmenter(MitoUNet(channels=(4, 8), dropout=0.1).eval(), roi_size=(32, 32), amp=amp)
    for what, other in others.items():
        with pytest.raises(ValueError) as err:
            other.run(tmp_path / "in.zarr", tmp_path / "cut", resume=True, **kwargs)
        message = str(err.value)
        assert "\n" not in message and "refusing to resume" in message
        named = sorted(part.split(":")[0] for part in message.split("other settings (")[1].split("); ")[0].split("; "))
        expected = sorted(what.split(", ") + (["halo", "roi_size"] if what == "window" else []))
        assert named == expected, message
    resumed = seg.run(tmp_path / "in.zarr", tmp_path / "cut", resume=True, **kwargs)
    assert len(calls) == 27 and sorted(calls) == list(range(27))  # 10 before the interruption, 17 after
    for name in ("probabilities", "masks"):
        np.testing.assert_array_equal(read_volume(resumed[name]), read_volume(full[name]))
    summary = lambda d: json.loads((tmp_path / d / "summary.json").read_text())["foreground_fraction"]  # noqa: E731
    assert summary("cut") == summary("full")


def test_dask_needs_a_block_output_and_a_bad_address_fails_fast(tmp_path):
    _zarr_input(tmp_path / "in.zarr", shape=(1, 32, 32))
    seg = _segmenter(_net(), roi_size=(32, 32))
    with pytest.raises(ValueError, match="--output_format zarr"):
        seg.run(tmp_path / "in.zarr", tmp_path / "o", scheduler="dask")
    with pytest.raises(ValueError, match=r"no Dask scheduler answers at tcp://127\.0\.0\.1:1 within 5 s"):
        seg.run(tmp_path / "in.zarr", tmp_path / "o", output_format="zarr", scheduler="dask", dask_address="tcp://127.0.0.1:1")


@pytest.mark.parametrize("processes", [False, True])  # True: the default, a LocalCluster of worker processes
def test_dask_local_cluster_equals_one_process(tmp_path, processes):
    _zarr_input(tmp_path / "in.zarr")
    seg = _segmenter(_net(), roi_size=(32, 32))
    kwargs = dict(output_format="zarr", block_slices=2, block_tile=32, progress=False)
    # the local cluster's worker processes run with cpu_count // workers threads; the one-process reference runs with
    # the same number, so that both sum in the same order and the results can be compared exactly
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        one = seg.run(tmp_path / "in.zarr", tmp_path / "one", **kwargs)
        two = seg.run(tmp_path / "in.zarr", tmp_path / "two", scheduler="dask", dask_workers=2, dask_processes=processes, **kwargs)
    finally:
        torch.set_num_threads(threads)
    for name in ("probabilities", "masks"):
        np.testing.assert_array_equal(read_volume(two[name]), read_volume(one[name]))
    assert len(list((tmp_path / "two" / "blocks_done").glob("[0-9]*.json"))) == 27  # each worker recorded its blocks


@pytest.mark.parametrize("length,roi,overlap,max_window,multiple", [
    (90, 32, 0.5, 128, 8), (90, 32, 0.5, 48, 8), (4096, 512, 0.5, 2048, 16), (5000, 512, 0.25, 2304, 16), (20, 32, 0.5, 64, 8),
])
def test_fitted_window_covers_the_axis_with_fewer_windows_and_the_same_overlap_in_pixels(length, roi, overlap, max_window, multiple):
    window, frac = fitted_window(length, roi, overlap, max_window, multiple)
    starts = window_starts(length, window, frac)
    if length <= roi:  # padded to the window, as without max_window
        assert (window, starts) == (roi, [0])
        return
    assert roi <= window <= max_window and window % multiple == 0
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + window] = True
    assert covered.all() and starts[-1] + window == length or window >= length
    neighbours = [b - a for a, b in zip(starts, starts[1:])]
    assert all(window - step >= int(roi * overlap) for step in neighbours)  # no less context than the trained window
    assert len(starts) <= len(window_starts(length, roi, overlap))


def test_a_window_grown_to_the_whole_slice_equals_the_plain_forward():
    image = np.random.default_rng(3).random((72, 88)).astype(np.float32)
    seg = _segmenter(_net(), roi_size=(32, 32), max_window=128)
    assert seg.windows(image.shape) == ((72, 88), (0.0, 0.0))
    with torch.no_grad():
        plain = torch.softmax(seg.network(torch.from_numpy(image)[None, None]), 1)[0, 1].numpy()
    np.testing.assert_allclose(seg.predict_slice(image), plain, atol=1e-5)
    with pytest.raises(ValueError, match=r"max_window \(16\) must be at least the window \(32, 32\)"):
        _segmenter(_net(), roi_size=(32, 32), max_window=16)


def test_grown_windows_keep_the_output_independent_of_the_block_grid(tmp_path):
    vol = _zarr_input(tmp_path / "in.zarr")
    seg = _segmenter(_net(), roi_size=(32, 32), max_window=48)
    assert seg.windows(vol.shape[1:])[0] == (44, 42)  # two windows per axis instead of 4 and 5
    whole = np.stack([seg.predict_slice(s) for s in vol])
    for i, (slices, tile) in enumerate([(5, 4096), (2, 48), (3, 60)]):
        w = seg.run(tmp_path / "in.zarr", tmp_path / f"out{i}", output_format="zarr", block_slices=slices,
                    block_tile=tile, progress=False)
        np.testing.assert_allclose(read_volume(w["probabilities"]), whole, atol=1e-5)


def _serial(monkeypatch):
    from mito_monai.inference import executors, stack_segmenter

    monkeypatch.setattr(stack_segmenter, "make_executor", lambda *a, **k: executors.InProcessExecutor(pipeline=False))


def test_reading_ahead_and_writing_behind_gives_the_serial_output(tmp_path, monkeypatch):
    _zarr_input(tmp_path / "in.zarr")
    seg = _segmenter(_net(), roi_size=(32, 32))
    kwargs = dict(output_format="zarr", block_slices=2, block_tile=32, progress=False)
    threads = set()
    original = BlockSegmentation.load
    monkeypatch.setattr(BlockSegmentation, "load", lambda self, i: threads.add(__import__("threading").current_thread().name) or original(self, i))
    piped = seg.run(tmp_path / "in.zarr", tmp_path / "piped", **kwargs)
    assert all(t.startswith("block-reader") for t in threads)  # the reads ran in the background thread
    _serial(monkeypatch)
    serial = seg.run(tmp_path / "in.zarr", tmp_path / "serial", **kwargs)
    for name in ("probabilities", "masks"):
        np.testing.assert_array_equal(read_volume(piped[name]), read_volume(serial[name]))


@pytest.mark.parametrize("pipeline", [True, False])
def test_a_chunk_that_breaks_during_the_run_is_the_same_one_line_error_naming_the_block(tmp_path, monkeypatch, pipeline):
    from mito_monai.io import DataError
    from mito_monai.inference import stack_segmenter

    vol = np.random.default_rng(0).integers(0, 255, (4, 64, 64), dtype=np.uint8)
    zarr.create_array(tmp_path / "in.zarr", shape=vol.shape, chunks=(2, 32, 32), dtype="u1", zarr_format=2)[:] = vol
    merge = stack_segmenter.merge_slice_stats

    def corrupt_after_the_statistics(parts, depth):  # the first pass reads every chunk; break one after it
        stats = merge(parts, depth)
        (tmp_path / "in.zarr" / "1.0.1").write_bytes(b"not a blosc frame")
        return stats

    monkeypatch.setattr(stack_segmenter, "merge_slice_stats", corrupt_after_the_statistics)
    if not pipeline:
        _serial(monkeypatch)
    seg = _segmenter(_net(), roi_size=(32, 32))
    with pytest.raises(DataError) as err:
        seg.run(tmp_path / "in.zarr", tmp_path / "out", output_format="zarr", block_slices=2, block_tile=32, progress=False)
    expected = f"{tmp_path / 'in.zarr'}: cannot read the block z 2:4, y 0:64, x 0:64 ("
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)
    assert "corrupt" in str(err.value)


def test_an_error_in_the_writer_thread_surfaces_and_stops_the_run(tmp_path, monkeypatch):
    _zarr_input(tmp_path / "in.zarr")
    computed = []
    original = BlockSegmentation.compute
    monkeypatch.setattr(BlockSegmentation, "compute", lambda self, i, n: computed.append(i) or original(self, i, n))

    def store(self, index, prob):
        raise OSError(f"disk full while writing block {index}")

    monkeypatch.setattr(BlockSegmentation, "store", store)
    with pytest.raises(OSError, match="disk full while writing block 0$"):
        _segmenter(_net(), roi_size=(32, 32)).run(tmp_path / "in.zarr", tmp_path / "out", output_format="zarr",
                                                      block_slices=1, block_tile=32, progress=False)
    assert computed == [0, 1]  # the error of block 0's write stops the run after the block computed meanwhile


def test_a_tile_smaller_than_the_grown_window_says_so(tmp_path):
    _zarr_input(tmp_path / "in.zarr")
    with pytest.raises(ValueError, match=r"halo \(44\) is larger than the block \(32\) along y.*grew from \(32, 32\) to \(44, 42\) \(--max_window 48\)"):
        _segmenter(_net(), roi_size=(32, 32), max_window=48).run(tmp_path / "in.zarr", tmp_path / "out", output_format="zarr",
                                                                     block_tile=32, progress=False)
