"""The lazy volume API: zarr v2/v3 arrays, groups, OME-Zarr (written by the ome-zarr library), boxes, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from mito_monai.io import (
    DataError,
    SlabBoxWriter,
    ZarrBoxWriter,
    create_ome_zarr_image,
    open_volume,
    open_volume_writer,
    read_volume,
    write_volume,
)

BOX = (slice(1, 3), slice(2, 9), slice(5, 11))


def _vol(shape=(4, 12, 14), seed=0):
    return np.random.default_rng(seed).integers(0, 60000, shape, dtype=np.uint16)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_array_and_group_paths(tmp_path, zarr_format):
    vol = _vol()
    a = zarr.create_array(tmp_path / "a.zarr", shape=vol.shape, chunks=(2, 5, 5), dtype=vol.dtype, zarr_format=zarr_format)
    a[:] = vol
    g = zarr.open_group(tmp_path / "g.zarr", mode="w", zarr_format=zarr_format)
    g.create_array("raw", shape=vol.shape, chunks=(1, 8, 8), dtype=vol.dtype)[:] = vol
    for path in (tmp_path / "a.zarr", tmp_path / "g.zarr", tmp_path / "g.zarr" / "raw"):
        with open_volume(path) as v:
            assert v.shape == vol.shape and v.dtype == vol.dtype and v.voxel_size is None
            np.testing.assert_array_equal(v.read(BOX), vol[BOX])
            np.testing.assert_array_equal(v[3], vol[3])
        np.testing.assert_array_equal(read_volume(path), vol)
    np.testing.assert_array_equal(read_volume(tmp_path / "g.zarr", label=True), (vol != 0).astype(np.uint8))


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_written_by_ome_zarr_level0_axes_and_voxel_size(tmp_path, version):
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    vol = _vol((4, 32, 32))
    fmt = FormatV04() if version == "0.4" else FormatV05()
    root = zarr.open_group(tmp_path / "img.ome.zarr", mode="w", zarr_format=2 if version == "0.4" else 3)
    write_image(vol[None], root, axes="czyx", fmt=fmt, scale_factors=(2, 4), scale={"z": 30.0, "y": 4.0, "x": 4.0},
                axes_units={"z": "nanometer", "y": "nanometer", "x": "nanometer"})
    with open_volume(tmp_path / "img.ome.zarr") as v:
        assert v.shape == (4, 32, 32)  # level 0, the singleton channel dropped
        assert v.voxel_size == (30.0, 4.0, 4.0) and v.unit == "nanometer"
        np.testing.assert_array_equal(v.read(BOX), vol[BOX])


def test_ome_zarr_output_reads_back_with_ome_zarr_and_napari_layout(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    store = tmp_path / "seg.ome.zarr"
    prob = create_ome_zarr_image(store, "probabilities", (3, 10, 12), np.float32, (1, 8, 8), (30.0, 5.0, 5.0), "nanometer")
    create_ome_zarr_image(store / "labels" / "mask", "mask", (3, 10, 12), np.uint8, (1, 8, 8), (30.0, 5.0, 5.0), label_of=store)
    assert prob.chunks == (1, 8, 8)
    ZarrBoxWriter(store / "0").write(BOX[:1] + (slice(0, 10), slice(0, 12)), np.full((2, 10, 12), 0.25))
    ZarrBoxWriter(store / "labels/mask/0").write((slice(0, 3), slice(0, 2), slice(0, 2)), np.ones((3, 2, 2)))
    nodes = list(Reader(parse_url(str(store)))())
    image = next(n for n in nodes if n.metadata.get("name") == "probabilities")
    label = next(n for n in nodes if n.metadata.get("name") == "mask")
    assert image.data[0].shape == (3, 10, 12) and label.data[0].shape == (3, 10, 12)
    assert "image-label" in dict(zarr.open_group(store / "labels" / "mask", mode="r").attrs)
    with open_volume(store) as v:
        assert v.voxel_size == (30.0, 5.0, 5.0) and v.unit == "nanometer"
        assert v.read()[1:3].min() == pytest.approx(0.25) and v.read()[0].max() == 0
    assert read_volume(store / "labels" / "mask").sum() == 12


def test_slab_writer_assembles_boxes_in_any_order_into_a_slice_format(tmp_path):
    vol = _vol((5, 12, 14)).astype(np.float32)
    boxes = [(slice(z, min(z + 2, 5)), slice(y, min(y + 8, 12)), slice(x, min(x + 8, 14)))
             for z in (0, 2, 4) for y in (0, 8) for x in (0, 8)]
    with open_volume_writer(tmp_path / "out.tif", vol.shape, np.float32) as w:
        slab = SlabBoxWriter(w, 2)
        for box in reversed(boxes):  # TIFF pages must go in order: the slab writer holds them back
            slab.write(box, vol[box])
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), vol)


def test_tiff_hdf5_folder_boxes_match_the_whole_read(tmp_path):
    vol = _vol((3, 12, 14)).astype(np.uint8)
    for path in (tmp_path / "v.tif", tmp_path / "v.h5", tmp_path / "v"):
        write_volume(path, vol)
        with open_volume(path) as v:
            np.testing.assert_array_equal(v.read(BOX), vol[BOX])


# bad input ------------------------------------------------------------------------------------
def test_zarr_path_that_is_not_an_array_or_a_group_with_one(tmp_path):
    g = zarr.open_group(tmp_path / "two.zarr", mode="w")
    g.create_array("a", shape=(2, 4, 4), dtype="u1")
    g.create_array("b", shape=(2, 4, 4), dtype="u1")
    with pytest.raises(DataError, match=r"two\.zarr: a zarr group holding arrays \['a', 'b'\].*two\.zarr/NAME"):
        open_volume(tmp_path / "two.zarr")
    zarr.open_group(tmp_path / "empty.zarr", mode="w")
    with pytest.raises(DataError, match=r"empty\.zarr: a zarr group holding no array"):
        open_volume(tmp_path / "empty.zarr")
    with pytest.raises(DataError, match=r"two\.zarr/c: no zarr array or group"):
        open_volume(tmp_path / "two.zarr" / "c")
    with pytest.raises(DataError, match=r"missing\.zarr does not exist"):
        open_volume(tmp_path / "missing.zarr")


def test_ome_zarr_without_multiscales(tmp_path):
    g = zarr.open_group(tmp_path / "bad.ome.zarr", mode="w")
    g.attrs["ome"] = {"version": "0.5"}
    g.create_array("0", shape=(2, 4, 4), dtype="u1")
    with pytest.raises(DataError, match=r"bad\.ome\.zarr: OME-Zarr group without multiscales"):
        open_volume(tmp_path / "bad.ome.zarr")


@pytest.mark.parametrize("shape,dims,found", [
    ((8, 8), None, r"\(8, 8\) \(2D, no axis names"),
    ((2, 3, 8, 8), None, r"\(2, 3, 8, 8\) \(4D, no axis names"),
    ((3, 2, 8, 8), ("c", "z", "y", "x"), r"with axes 'czyx' has 3 entries along 'c'"),
    ((8, 8), ("y", "x"), r"with axes 'yx'; expected the axes z, y and x"),
])
def test_arrays_that_are_not_zyx_say_which_axes_were_found(tmp_path, shape, dims, found):
    zarr.create_array(tmp_path / "a.zarr", shape=shape, dtype="u1", dimension_names=dims)
    with pytest.raises(DataError, match=r"a\.zarr: array of shape.*" + found):
        open_volume(tmp_path / "a.zarr")


def test_corrupt_and_missing_chunks_name_the_block(tmp_path):
    vol = _vol((4, 8, 8)).astype(np.uint8)
    a = zarr.create_array(tmp_path / "c.zarr", shape=vol.shape, chunks=(2, 4, 4), dtype="u1", zarr_format=2)
    a[:] = vol
    (tmp_path / "c.zarr" / "1.0.1").write_bytes(b"not a blosc frame")
    with open_volume(tmp_path / "c.zarr") as v:
        np.testing.assert_array_equal(v.read((slice(0, 2), slice(0, 8), slice(0, 8))), vol[:2])  # other chunks read
        with pytest.raises(DataError, match=r"c\.zarr: cannot read the block z 2:4, y 0:8, x 0:8 .*corrupt"):
            v.read((slice(2, 4), slice(0, 8), slice(0, 8)))
    (tmp_path / "c.zarr" / "1.0.1").unlink()
    with open_volume(tmp_path / "c.zarr", missing_chunks="error") as v:
        with pytest.raises(DataError, match=r"block z 2:4, y 0:8, x 4:8 has 1 missing chunk file\(s\) \(chunk \(1, 0, 1\)"):
            v.read((slice(2, 4), slice(0, 8), slice(4, 8)))
    with open_volume(tmp_path / "c.zarr") as v:  # zarr's own convention: an absent chunk is the fill value
        assert not v.read((slice(2, 4), slice(0, 4), slice(4, 8))).any()


def test_tiff_written_page_by_page_is_one_stack(tmp_path):
    """A TIFF whose pages were written one at a time (one series per page) is read as a stack, not its first page."""
    vol = _vol((3, 6, 7))
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        for page in vol:
            tif.write(page)
    with open_volume(tmp_path / "pages.tif") as v:
        assert v.shape == (3, 6, 7)
        np.testing.assert_array_equal(v.read(BOX), vol[BOX])
    with open_volume(tmp_path / "pages.tif", label=True) as v:
        assert v.dtype == np.uint8
        np.testing.assert_array_equal(v.read(), (vol != 0).astype(np.uint8))


def test_a_list_of_slice_files_is_a_volume(tmp_path):
    from PIL import Image

    vol = _vol((3, 6, 7)).astype(np.uint8)
    files = []
    for z in (2, 0, 1):  # the order given, not the names'
        Image.fromarray(vol[z]).save(tmp_path / f"s{z}.png")
        files.append(tmp_path / f"s{z}.png")
    with open_volume(files) as v:
        assert v.shape == (3, 6, 7) and v.dtype == np.uint8
        np.testing.assert_array_equal(v.read(), vol[[2, 0, 1]])
    Image.fromarray(vol[0, :5]).save(tmp_path / "s0.png")
    with open_volume(files) as v, pytest.raises(DataError, match=r"s0.png: slice shape \(5, 7\) differs from s2.png"):
        v.read()
