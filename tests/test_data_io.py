"""Tests of mito_monai.io: readers, writers and their errors, on small generated files."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from mito_monai.io import DataError, natural_sort_key, open_volume_writer, read_volume, write_volume
from mito_monai.io import list_image_files, read_image_files, split_h5_path

# ITK's SWIG bindings emit DeprecationWarnings on import; they are not ours.
pytestmark = pytest.mark.filterwarnings("ignore:builtin type:DeprecationWarning")


def _rng(seed=0):
    return np.random.default_rng(seed)


def _save_png(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


# ----------------------------------------------------------------------------------------------
# natural sort
# ----------------------------------------------------------------------------------------------
def test_natural_sort_key_orders_numbers_by_value():
    names = ["10.png", "2.png", "1.png", "mask0011.png", "mask0002.png", "b.png", "a10b2.png", "a2b10.png"]
    ordered = sorted(names, key=natural_sort_key)
    assert ordered == ["1.png", "2.png", "10.png", "a2b10.png", "a10b2.png", "b.png", "mask0002.png", "mask0011.png"]
    assert natural_sort_key(Path("/x/y/2.png")) == natural_sort_key("2.png")


def test_folder_is_read_in_natural_order(tmp_path):
    for i in (1, 2, 10):
        _save_png(tmp_path / f"{i}.png", np.full((4, 5), i, dtype=np.uint8))
    vol = read_volume(tmp_path)
    assert vol.shape == (3, 4, 5) and vol.dtype == np.uint8
    assert vol[:, 0, 0].tolist() == [1, 2, 10]  # lexicographic order would give 1, 10, 2


# ----------------------------------------------------------------------------------------------
# label quirks of the real data
# ----------------------------------------------------------------------------------------------
def test_one_bit_png_label_with_foreground_one(tmp_path):
    mask = _rng().random((6, 7)) > 0.5
    path = _save_png(tmp_path / "m.png", mask)
    assert Image.open(path).mode == "1"
    lab = read_volume(path, label=True)
    assert lab.dtype == np.uint8 and lab.shape == (1, 6, 7)
    np.testing.assert_array_equal(lab[0], mask.astype(np.uint8))


def test_eight_bit_0_255_label_and_stray_values(tmp_path):
    mask = _rng(1).random((6, 7)) > 0.5
    arr = mask.astype(np.uint8) * 255
    arr[0, 0] = 3  # anti-aliasing residue, as in some VNC III masks: non-zero is foreground
    _save_png(tmp_path / "m.png", arr)
    lab = read_volume(tmp_path / "m.png", label=True)[0]
    expected = mask.astype(np.uint8)
    expected[0, 0] = 1
    np.testing.assert_array_equal(lab, expected)
    assert set(np.unique(lab)) <= {0, 1}


def test_rgba_with_equal_channels_is_grey(tmp_path):
    grey = _rng(2).integers(0, 256, (5, 6), dtype=np.uint8)
    rgba = np.stack([grey, grey, grey, np.full_like(grey, 255)], axis=-1)
    _save_png(tmp_path / "rgba.png", rgba)
    np.testing.assert_array_equal(read_volume(tmp_path / "rgba.png")[0], grey)
    np.testing.assert_array_equal(read_volume(tmp_path / "rgba.png", label=True)[0], (grey > 0).astype(np.uint8))


def test_colour_image_is_luminance_and_colour_label_is_refused(tmp_path):
    rgb = _rng(3).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    _save_png(tmp_path / "c.png", rgb)
    expected = np.rint(rgb.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.uint8)
    np.testing.assert_array_equal(read_volume(tmp_path / "c.png")[0], expected)
    with pytest.raises(DataError, match=r"c\.png.*colour"):
        read_volume(tmp_path / "c.png", label=True)


def test_instance_id_label_volume_is_binarised(tmp_path):
    ids = _rng(4).integers(0, 6, (3, 8, 9)).astype(np.uint16) * 1000
    tifffile.imwrite(tmp_path / "ids.tif", ids, photometric="minisblack")
    lab = read_volume(tmp_path / "ids.tif", label=True)
    assert lab.dtype == np.uint8
    np.testing.assert_array_equal(lab, (ids > 0).astype(np.uint8))


def test_constant_slice_reads_fine(tmp_path):
    _save_png(tmp_path / "0.png", np.zeros((5, 5), np.uint8))
    _save_png(tmp_path / "1.png", np.full((5, 5), 7, np.uint8))
    vol = read_volume(tmp_path)
    assert vol[0].max() == 0 and vol[1].min() == 7
    assert read_volume(tmp_path, label=True)[0].sum() == 0


def test_single_2d_file_becomes_one_slice(tmp_path):
    img = _rng(5).integers(0, 65535, (6, 4), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "one.tif", img)
    vol = read_volume(tmp_path / "one.tif")
    assert vol.shape == (1, 6, 4) and vol.dtype == np.uint16
    np.testing.assert_array_equal(vol[0], img)


# ----------------------------------------------------------------------------------------------
# round trips
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [False, True])
def test_multipage_tiff_round_trip(tmp_path, compress):
    vol = _rng(6).integers(0, 65535, (4, 6, 5), dtype=np.uint16)
    out = write_volume(tmp_path / "v.tif", vol, compress=compress)
    assert out == tmp_path / "v.tif"
    with tifffile.TiffFile(out) as tf:
        assert len(tf.pages) == 4
    back = read_volume(out)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, vol)


def test_nifti_axis_order_round_trip(tmp_path):
    vol = _rng(7).random((3, 4, 5)).astype(np.float32)
    write_volume(tmp_path / "v.nii.gz", vol)
    raw = np.asanyarray(nib.load(str(tmp_path / "v.nii.gz")).dataobj)
    assert raw.shape == (5, 4, 3)  # NIfTI stores (X, Y, Z)
    assert raw[4, 1, 2] == vol[2, 1, 4]
    back = read_volume(tmp_path / "v.nii.gz")
    assert back.shape == (3, 4, 5) and back.dtype == np.float32
    np.testing.assert_array_equal(back, vol)


def test_nifti_written_by_nibabel_is_transposed(tmp_path):
    xyz = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)  # (X, Y, Z)
    nib.save(nib.Nifti1Image(xyz, np.eye(4)), str(tmp_path / "n.nii"))
    vol = read_volume(tmp_path / "n.nii")
    assert vol.shape == (4, 3, 2) and vol.dtype == np.int16
    assert vol[3, 2, 1] == xyz[1, 2, 3]


def test_hdf5_key_syntax_and_single_dataset(tmp_path):
    a = _rng(8).integers(0, 255, (2, 3, 4), dtype=np.uint8)
    b = _rng(9).random((2, 3, 4)).astype(np.float32)
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["raw"] = a
        f.create_group("group")["pred"] = b
    np.testing.assert_array_equal(read_volume(f"{tmp_path / 'two.h5'}:raw"), a)
    np.testing.assert_array_equal(read_volume(tmp_path / "two.h5", key="group/pred"), b)
    np.testing.assert_array_equal(read_volume(f"{tmp_path / 'two.h5'}:/group/pred"), b)
    with pytest.raises(DataError, match=r"2 datasets.*'raw'.*'group/pred'|2 datasets.*'group/pred'.*'raw'"):
        read_volume(tmp_path / "two.h5")
    write_volume(tmp_path / "one.h5", a)  # default key "main"
    with h5py.File(tmp_path / "one.h5", "r") as f:
        assert list(f.keys()) == ["main"]
    np.testing.assert_array_equal(read_volume(tmp_path / "one.h5"), a)
    write_volume(f"{tmp_path / 'k.hdf5'}:vol", a)
    np.testing.assert_array_equal(read_volume(tmp_path / "k.hdf5", key="vol"), a)
    assert split_h5_path("x/y.h5:a/b") == (Path("x/y.h5"), "a/b")


def test_wrong_hdf5_key_lists_existing_keys(tmp_path):
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["raw"] = np.zeros((1, 2, 2), np.uint8)
        f["label"] = np.zeros((1, 2, 2), np.uint8)
    with pytest.raises(DataError) as err:
        read_volume(tmp_path / "f.h5", key="image")
    msg = str(err.value)
    assert "'image'" in msg and "'raw'" in msg and "'label'" in msg and "f.h5" in msg


def test_itk_mha_round_trip(tmp_path):
    import itk

    vol = _rng(10).integers(0, 4000, (3, 5, 7), dtype=np.uint16)
    write_volume(tmp_path / "v.mha", vol, compress=True)
    np.testing.assert_array_equal(read_volume(tmp_path / "v.mha"), vol)
    # a file written by ITK itself: array_view_from_image is (Z, Y, X), image size is (X, Y, Z)
    image = itk.image_from_array(vol.astype(np.float32))
    assert tuple(image.GetLargestPossibleRegion().GetSize()) == (7, 5, 3)
    itk.imwrite(image, str(tmp_path / "itk.nrrd"))
    back = read_volume(tmp_path / "itk.nrrd")
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, vol.astype(np.float32))


def test_png_folder_write_and_read(tmp_path):
    vol = _rng(11).integers(0, 255, (3, 4, 6), dtype=np.uint8)
    out = write_volume(tmp_path / "slices", vol)
    assert sorted(os.listdir(out)) == ["0000.png", "0001.png", "0002.png"]
    np.testing.assert_array_equal(read_volume(out), vol)
    mask = vol > 100
    write_volume(str(tmp_path / "mask") + "/", mask)
    assert np.array_equal(np.array(Image.open(tmp_path / "mask" / "0001.png")), mask[1].astype(np.uint8) * 255)
    with pytest.raises(DataError, match=r"PNG.*float32.*\.tif"):
        write_volume(tmp_path / "float", vol.astype(np.float32))


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="nothing_here.*does not exist"):
        read_volume(tmp_path / "nothing_here.tif")
    with pytest.raises(DataError, match="does not exist"):
        list_image_files(tmp_path / "no_folder")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"\0")
    with pytest.raises(DataError, match=r"empty.*is empty"):
        read_volume(tmp_path / "empty")


def test_non_image_file_in_image_folder_is_named(tmp_path):
    _save_png(tmp_path / "0.png", np.zeros((3, 3), np.uint8))
    (tmp_path / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored
    assert read_volume(tmp_path).shape == (1, 3, 3)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt.*not an image"):
        read_volume(tmp_path)


def test_corrupt_png_is_named(tmp_path):
    good = _save_png(tmp_path / "0.png", _rng(13).integers(0, 255, (32, 32), dtype=np.uint8))
    data = good.read_bytes()
    (tmp_path / "1.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"1\.png.*corrupt or truncated"):
        read_volume(tmp_path)
    (tmp_path / "x.tif").write_bytes(b"II*\0garbage")
    with pytest.raises(DataError, match=r"x\.tif"):
        read_volume(tmp_path / "x.tif")


def test_slices_of_different_shapes(tmp_path):
    _save_png(tmp_path / "0.png", np.zeros((4, 5), np.uint8))
    _save_png(tmp_path / "1.png", np.zeros((4, 5), np.uint8))
    _save_png(tmp_path / "2.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(DataError) as err:
        read_volume(tmp_path)
    msg = str(err.value)
    assert "2.png" in msg and "(5, 4)" in msg and "(4, 5)" in msg


def test_nan_in_float_volume(tmp_path):
    vol = np.zeros((2, 3, 3), np.float32)
    vol[0, 1, 1] = np.nan
    vol[1, 0, 0] = np.inf
    tifffile.imwrite(tmp_path / "f.tif", vol, photometric="minisblack")
    with pytest.raises(DataError, match=r"f\.tif.*2 of 18 voxels are NaN or infinite"):
        read_volume(tmp_path / "f.tif")
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["main"] = vol
    with pytest.raises(DataError, match="NaN"):
        read_volume(tmp_path / "f.h5")


def test_unknown_extension(tmp_path):
    (tmp_path / "v.xyz").write_bytes(b"1")
    with pytest.raises(DataError, match=r"v\.xyz.*unknown file type '\.xyz'"):
        read_volume(tmp_path / "v.xyz")


def test_write_volume_refuses_to_overwrite(tmp_path):
    vol = np.ones((2, 3, 3), np.uint8)
    write_volume(tmp_path / "v.tif", vol)
    with pytest.raises(DataError, match=r"v\.tif already exists.*overwrite=True"):
        write_volume(tmp_path / "v.tif", vol * 2)
    np.testing.assert_array_equal(read_volume(tmp_path / "v.tif"), vol)  # untouched
    write_volume(tmp_path / "v.tif", vol * 2, overwrite=True)
    np.testing.assert_array_equal(read_volume(tmp_path / "v.tif"), vol * 2)

    write_volume(tmp_path / "pngs", vol)
    with pytest.raises(DataError, match=r"pngs already exists and is not empty.*overwrite=True"):
        write_volume(tmp_path / "pngs", vol)
    write_volume(tmp_path / "pngs", vol[:1] * 3, overwrite=True)
    assert sorted(os.listdir(tmp_path / "pngs")) == ["0000.png"]
    (tmp_path / "pngs" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="keep.txt"):
        write_volume(tmp_path / "pngs", vol, overwrite=True)
    assert (tmp_path / "pngs" / "keep.txt").exists()
    # no temporary leftovers next to the outputs
    assert sorted(os.listdir(tmp_path)) == ["pngs", "v.tif"]


# ----------------------------------------------------------------------------------------------
# slice-by-slice writer
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["w.tif", "w.h5", "w.nii.gz", "wpng"])
def test_volume_writer_round_trip(tmp_path, name):
    vol = _rng(14).integers(0, 60000, (4, 5, 6), dtype=np.uint16)
    with open_volume_writer(tmp_path / name, vol.shape, np.uint16) as writer:
        order = range(4) if name.endswith(".tif") else [2, 0, 3, 1]
        for z in order:
            writer.write_slice(z, vol[z])
        assert not (tmp_path / name).exists()  # only a temporary output while writing
    np.testing.assert_array_equal(read_volume(tmp_path / name), vol)
    assert sorted(os.listdir(tmp_path)) == [name]


def test_volume_writer_is_atomic_on_errors(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with open_volume_writer(tmp_path / "x.tif", (2, 3, 3), np.uint8) as writer:
            writer.write_slice(0, np.zeros((3, 3), np.uint8))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    with pytest.raises(DataError, match=r"only 1 of 2 slices"):
        with open_volume_writer(tmp_path / "x.h5", (2, 3, 3), np.uint8) as writer:
            writer.write_slice(1, np.zeros((3, 3), np.uint8))
    assert os.listdir(tmp_path) == []
    with open_volume_writer(tmp_path / "y.tif", (2, 3, 3), np.uint8) as writer:
        with pytest.raises(ValueError, match="in order"):
            writer.write_slice(1, np.zeros((3, 3), np.uint8))
        with pytest.raises(ValueError, match="cast it first"):
            writer.write_slice(0, np.zeros((3, 3), np.float32))
        with pytest.raises(ValueError, match="shape"):
            writer.write_slice(0, np.zeros((3, 4), np.uint8))
        writer.write_slice(0, np.full((3, 3), 5, np.int64))  # integers that fit are accepted
        writer.write_slice(1, np.ones((3, 3), bool))
    np.testing.assert_array_equal(read_volume(tmp_path / "y.tif")[:, 0, 0], [5, 1])
    write_volume(tmp_path / "exists.tif", np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(DataError, match="already exists"):
        with open_volume_writer(tmp_path / "exists.tif", (1, 2, 2), np.uint8):
            pass


def test_read_image_files_promotes_dtypes(tmp_path):
    a = _save_png(tmp_path / "a.png", np.full((2, 2), 3, np.uint8))
    tifffile.imwrite(tmp_path / "b.tif", np.full((2, 2), 1000, np.uint16))
    vol = read_image_files([a, tmp_path / "b.tif"])
    assert vol.dtype == np.uint16 and vol[:, 0, 0].tolist() == [3, 1000]


def test_rgba_label_with_the_mask_in_alpha(tmp_path):
    """A mask drawn as opacity on a transparent background (uniform colour) is read from the alpha channel;
    an opaque RGBA label keeps its grey channel, and an empty transparent slice stays empty."""
    alpha = np.zeros((6, 7), dtype=np.uint8)
    alpha[1:4, 2:5] = 255
    colour = np.full((6, 7), 255, dtype=np.uint8)  # white everywhere: "non-zero" grey would be all foreground
    _save_png(tmp_path / "alpha.png", np.stack([colour, colour, colour, alpha], axis=-1))
    np.testing.assert_array_equal(read_volume(tmp_path / "alpha.png", label=True)[0], (alpha > 0).astype(np.uint8))
    _save_png(tmp_path / "empty.png", np.stack([colour, colour, colour, np.zeros_like(alpha)], axis=-1))
    assert read_volume(tmp_path / "empty.png", label=True).sum() == 0
    grey = alpha.copy()
    _save_png(tmp_path / "opaque.png", np.stack([grey, grey, grey, np.full_like(grey, 255)], axis=-1))
    np.testing.assert_array_equal(read_volume(tmp_path / "opaque.png", label=True)[0], (grey > 0).astype(np.uint8))


def test_jpeg_labels_are_refused_images_are_read(tmp_path):
    from PIL import Image

    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(tmp_path / "mask.jpg", quality=75)
    assert read_volume(tmp_path / "mask.jpg").shape == (1, 16, 16)  # as an image it is fine
    with pytest.raises(DataError, match=r"mask\.jpg: JPEG label; JPEG compression is lossy"):
        read_volume(tmp_path / "mask.jpg", label=True)
    folder = tmp_path / "labels"
    folder.mkdir()
    Image.fromarray(mask).save(folder / "z0.jpeg")
    with pytest.raises(DataError, match=r"z0\.jpeg: JPEG label"):
        read_volume(folder, label=True)
