"""Whole-stack inference: lazy slice sources, streamed outputs, formats, no silent overwrite."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
import torch
from monai.inferers import SlidingWindowInferer
from torch import nn

from mito_monai.io import Volume, read_volume, write_volume
from mito_monai.inference import StackSegmenter, normalize_slice


class Darkness(nn.Module):
    """Logits that make dark pixels foreground: p(fg) = sigmoid(10 (0.5 - x)) after normalisation."""

    def forward(self, x):
        fg = 10.0 * (0.5 - x)
        return torch.cat([torch.zeros_like(fg), fg], dim=1)


def _segmenter(*args, **kwargs) -> StackSegmenter:
    """A StackSegmenter in float32 (the references here are float32) unless a test chooses its precision."""
    return StackSegmenter(*args, **{"amp": False, **kwargs})


def _stack(z=3, y=37, x=45, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (z, y, x), dtype=np.uint8)


def test_normalize_slice():
    np.testing.assert_allclose(normalize_slice(np.array([[2, 4], [6, 10]])), [[0, 0.25], [0.5, 1.0]])
    assert not normalize_slice(np.full((3, 3), 7)).any()
    with pytest.raises(ValueError, match="NaN"):
        normalize_slice(np.array([[np.nan, 1.0]]))


@pytest.mark.parametrize("kind", ["tif", "h5", "folder", "nii"])
def test_slice_source_reads_each_format_lazily(tmp_path, kind):
    vol = _stack()
    path = {"tif": tmp_path / "s.tif", "h5": tmp_path / "s.h5", "folder": tmp_path / "s", "nii": tmp_path / "s.nii.gz"}[kind]
    write_volume(path, vol)
    with Volume(path) as src:
        assert src.shape == vol.shape and len(src) == 3
        for z in range(3):
            np.testing.assert_array_equal(src[z], vol[z])
        with pytest.raises(IndexError):
            src[3]


def test_slice_source_hdf5_key_errors_list_keys(tmp_path):
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["raw"] = _stack()
        f["other"] = _stack()
    with pytest.raises(ValueError, match=r"'nope'.*'other', 'raw'"):
        Volume(tmp_path / "v.h5", key="nope")
    with Volume(str(tmp_path / "v.h5") + ":raw") as src:
        assert src.shape == (3, 37, 45)


def test_segmenter_matches_direct_computation_and_writes_all_outputs(tmp_path):
    vol = _stack()
    tifffile.imwrite(tmp_path / "in.tif", vol, photometric="minisblack")
    inferer = SlidingWindowInferer(roi_size=(16, 16), overlap=0.5, mode="gaussian", padding_mode="reflect")
    seg = _segmenter(Darkness(), inferer=inferer)
    written = seg.run(tmp_path / "in.tif", tmp_path / "out")
    prob = read_volume(written["probabilities"])
    mask = read_volume(written["masks"])
    expected = np.stack([1 / (1 + np.exp(-10 * (0.5 - normalize_slice(s)))) for s in vol])
    np.testing.assert_allclose(prob, expected, atol=1e-5)  # the window blend of a pointwise net is exact
    np.testing.assert_array_equal(mask, (expected >= 0.5).astype(np.uint8) * 255)
    assert (tmp_path / "out" / "preview_z0001.png").is_file()

    with pytest.raises(Exception, match="exist|overwrite"):
        seg.run(tmp_path / "in.tif", tmp_path / "out")
    before = read_volume(written["masks"])
    np.testing.assert_array_equal(before, mask)  # the failed call changed nothing
    seg.run(tmp_path / "in.tif", tmp_path / "out", overwrite=True)


@pytest.mark.parametrize("fmt", ["h5", "png", "nii"])
def test_segmenter_output_formats(tmp_path, fmt):
    vol = _stack(z=2, y=20, x=24)
    write_volume(tmp_path / "in", vol)  # a PNG folder as input
    seg = _segmenter(Darkness(), roi_size=(16, 16))
    written = seg.run(tmp_path / "in", tmp_path / "out", output_format=fmt, preview=False)
    prob = read_volume(written["probabilities"])
    mask = read_volume(written["masks"])
    assert prob.shape == mask.shape == (2, 20, 24)
    # the same figures as the direct computation (the pointwise net's window blend is exact), in every format
    expected = np.stack([1 / (1 + np.exp(-10 * (0.5 - normalize_slice(s)))) for s in vol])
    if fmt == "png":
        assert prob.dtype == np.uint8  # PNG holds 0..255: the probability rounded to 1/255
        np.testing.assert_allclose(prob / 255.0, expected, atol=0.5 / 255 + 1e-5)
    else:
        assert prob.dtype == np.float32
        np.testing.assert_allclose(prob, expected, atol=1e-5)
    np.testing.assert_array_equal(mask, (expected >= 0.5).astype(np.uint8) * 255)


def test_segmenter_loads_checkpoints_and_explains_mismatch(tmp_path):
    from mito_monai.networks.nets import MitoUNet

    net = MitoUNet(channels=(4, 8))
    torch.save(net.state_dict(), tmp_path / "model.pt")
    seg = _segmenter(MitoUNet(channels=(4, 8)), roi_size=(16, 16), checkpoint=tmp_path / "model.pt")
    for a, b in zip(seg.network.state_dict().values(), net.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="does not fit this network"):
        _segmenter(MitoUNet(channels=(8, 16)), checkpoint=tmp_path / "model.pt")


def test_bad_input_names_the_file_and_slice(tmp_path):
    vol = np.ones((2, 16, 16), np.float32)
    vol[1, 3, 3] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", vol, photometric="minisblack")
    seg = _segmenter(Darkness(), roi_size=(16, 16))
    with pytest.raises(ValueError, match=r"nan.tif, slice 1: .*NaN"):
        seg.run(tmp_path / "nan.tif", tmp_path / "out")
    assert not list((tmp_path / "out").glob("probabilities*"))  # nothing half-written left behind
    with pytest.raises(ValueError, match="output_format"):
        seg.run(tmp_path / "nan.tif", tmp_path / "out2", output_format="jpg")


def test_a_file_that_is_not_a_tiff_is_a_data_error_naming_it(tmp_path):
    from mito_monai.io import DataError

    bad = tmp_path / "stack.tif"
    bad.write_bytes(b"junk, not a TIFF header")
    with pytest.raises(DataError, match=r"stack\.tif: cannot be read as TIFF"):
        Volume(bad)
    seg = _segmenter(Darkness(), roi_size=(16, 16))
    with pytest.raises(DataError, match=r"stack\.tif: cannot be read as TIFF"):
        seg.run(bad, tmp_path / "out")
    assert bad.read_bytes() == b"junk, not a TIFF header"  # the input is left as it was
