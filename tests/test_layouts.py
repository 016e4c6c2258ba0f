"""Tests of mito_monai.datasets and EMSliceDataset on tiny generated datasets."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from mito_monai.datasets import available_layouts, dataset_info, list_splits, load_split, split_files
from mito_monai.io import DataError, write_volume
from mito_monai.datasets import mitoem as layouts_module


def _volume(seed: int, shape=(3, 8, 10)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    label = (image > 150).astype(np.uint8)  # label derived from the image: pairing errors show up
    return image, label


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_vnc3(root: Path, image: np.ndarray, label: np.ndarray) -> Path:
    raw, mito = root / "stack1" / "raw", root / "stack1" / "mitochondria"
    raw.mkdir(parents=True)
    mito.mkdir(parents=True)
    for z in range(image.shape[0]):
        tifffile.imwrite(raw / f"{z:02d}.tif", image[z])
        if z % 2:  # the real masks mix 1-bit (foreground 1) and 8-bit (255) PNGs
            _png(mito / f"{z:02d}.png", label[z].astype(bool))
        else:
            _png(mito / f"{z:02d}.png", label[z] * np.uint8(255))
    return root


def make_lucchi_pp(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], rgba_test: bool = True) -> Path:
    for split, (image, label) in splits.items():
        cap = split.capitalize()
        for z in range(image.shape[0]):
            idx = 2 * z  # every second slice, as in the shared copy: 0, 2, ..., 10, 12
            _png(root / f"{cap}_In" / f"mask{idx:04d}.png", image[z])
            mask = label[z] * np.uint8(255)
            if split == "test" and rgba_test:
                mask = np.stack([mask, mask, mask, np.full_like(mask, 255)], axis=-1)
            _png(root / f"{cap}_Out" / f"{idx}.png", mask)
    return root


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------
def test_registry_and_unknown_names(tmp_path):
    assert available_layouts() == ["folder", "lucchi", "lucchi_pp", "mitoem", "vnc3"]
    with pytest.raises(DataError, match=r"unknown dataset layout 'nope'.*folder, lucchi, lucchi_pp, mitoem, vnc3"):
        list_splits("nope", tmp_path)
    image, label = _volume(0)
    make_vnc3(tmp_path / "v", image, label)
    with pytest.raises(DataError, match=r"unknown split 'test'.*available splits: train"):
        load_split("vnc3", tmp_path / "v", "test")


def test_missing_dataset_folder(tmp_path):
    for name in available_layouts():
        with pytest.raises(DataError, match=rf"{tmp_path / 'absent'} does not exist.*{name}"):
            list_splits(name, tmp_path / "absent")


# ----------------------------------------------------------------------------------------------
# vnc3
# ----------------------------------------------------------------------------------------------
def test_vnc3_load_and_info(tmp_path):
    image, label = _volume(1, (12, 8, 10))
    root = make_vnc3(tmp_path / "vnc3", image, label)
    assert list_splits("vnc3", root) == ["train"]
    img, lab = load_split("vnc3", root, "train")
    np.testing.assert_array_equal(img, image)
    np.testing.assert_array_equal(lab, label)
    info = dataset_info("vnc3", root)
    json.dumps(info)
    assert info == {
        "train": {
            "image_shape": [12, 8, 10],
            "dtype": "uint8",
            "label_foreground_fraction": pytest.approx(label.mean()),
            "image": str(root / "stack1" / "raw"),
            "label": str(root / "stack1" / "mitochondria"),
        }
    }
    img_only, none = load_split("vnc3", root, "train", with_label=False)
    assert none is None and img_only.shape == (12, 8, 10)


def test_vnc3_unpaired_files_are_named(tmp_path):
    image, label = _volume(2)
    root = make_vnc3(tmp_path / "vnc3", image, label)
    (root / "stack1" / "mitochondria" / "01.png").rename(root / "stack1" / "mitochondria" / "07.png")
    with pytest.raises(DataError) as err:
        split_files("vnc3", root, "train")
    msg = str(err.value)
    assert "images without a label" in msg and "01.tif" in msg
    assert "labels without an image" in msg and "07.png" in msg


def test_vnc3_missing_label_folder(tmp_path):
    image, label = _volume(3)
    root = make_vnc3(tmp_path / "vnc3", image, label)
    for f in (root / "stack1" / "mitochondria").iterdir():
        f.unlink()
    (root / "stack1" / "mitochondria").rmdir()
    with pytest.raises(DataError, match=r"mitochondria: expected a folder.*found nothing"):
        list_splits("vnc3", root)


# ----------------------------------------------------------------------------------------------
# lucchi (EPFL)
# ----------------------------------------------------------------------------------------------
def test_lucchi_layout(tmp_path):
    root = tmp_path / "lucchi"
    root.mkdir()
    for prefix, seed in (("training", 4), ("testing", 5)):
        image, label = _volume(seed)
        tifffile.imwrite(root / f"{prefix}.tif", image, photometric="minisblack")
        tifffile.imwrite(root / f"{prefix}_groundtruth.tif", label * np.uint8(255), photometric="minisblack")
    assert list_splits("lucchi", root) == ["train", "test"]
    img, lab = load_split("lucchi", root, "test")
    np.testing.assert_array_equal(img, _volume(5)[0])
    np.testing.assert_array_equal(lab, _volume(5)[1])
    (root / "testing_groundtruth.tif").unlink()
    with pytest.raises(DataError, match=r"testing_groundtruth\.tif: expected the test ground-truth stack"):
        load_split("lucchi", root, "test")


# ----------------------------------------------------------------------------------------------
# lucchi_pp
# ----------------------------------------------------------------------------------------------
def test_lucchi_pp_natural_pairing_and_rgba(tmp_path):
    # 7 slices -> label names 0, 2, ..., 12: lexicographic order (0, 10, 12, 2, ...) would mis-pair
    train, test = _volume(6, (7, 8, 10)), _volume(7, (7, 8, 10))
    root = make_lucchi_pp(tmp_path / "lpp", {"train": train, "test": test})
    assert list_splits("lucchi_pp", root) == ["train", "test"]
    for split, (image, label) in (("train", train), ("test", test)):
        img, lab = load_split("lucchi_pp", root, split)
        np.testing.assert_array_equal(img, image)
        np.testing.assert_array_equal(lab, label)
    info = dataset_info("lucchi_pp", root)
    assert info["test"]["image_shape"] == [7, 8, 10]
    assert info["test"]["label_foreground_fraction"] == pytest.approx(test[1].mean())


def test_lucchi_pp_count_mismatch(tmp_path):
    root = make_lucchi_pp(tmp_path / "lpp", {"train": _volume(8, (3, 8, 10))})
    (root / "Train_Out" / "4.png").unlink()
    with pytest.raises(DataError, match="Train_In has 3 slices but Train_Out has 2"):
        load_split("lucchi_pp", root, "train")


def test_image_label_shape_mismatch_names_both(tmp_path):
    root = make_lucchi_pp(tmp_path / "lpp", {"train": _volume(9, (2, 8, 10))})
    for f in (root / "Train_Out").iterdir():
        _png(f, np.zeros((8, 9), np.uint8))
    with pytest.raises(DataError) as err:
        load_split("lucchi_pp", root, "train")
    msg = str(err.value)
    assert "Train_In" in msg and "Train_Out" in msg and "(2, 8, 10)" in msg and "(2, 8, 9)" in msg
    with pytest.raises(DataError, match=r"\(2, 8, 10\).*\(2, 8, 9\)"):
        dataset_info("lucchi_pp", root)


# ----------------------------------------------------------------------------------------------
# mitoem
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def small_mitoem_splits(monkeypatch):
    monkeypatch.setitem(layouts_module.MITOEM_SPLITS, "train", (0, 3, "mito-train-v2", "im_train.h5", "mito_train.h5"))
    monkeypatch.setitem(layouts_module.MITOEM_SPLITS, "val", (3, 5, "mito-val-v2", "im_val.h5", "mito_val.h5"))


def test_mitoem_folders_and_h5(tmp_path, small_mitoem_splits):
    root = tmp_path / "mitoem"
    rng = np.random.default_rng(10)
    stack = rng.integers(0, 256, (7, 6, 5), dtype=np.uint8)  # full stack: train 0-2, val 3-4, test 5-6
    ids = rng.integers(0, 4, (5, 6, 5)).astype(np.uint16) * 300  # instance IDs
    r = root / "MitoEM-R"
    for z in range(7):
        _png(r / "im" / f"im{z:04d}.png", stack[z])
    for z in range(5):
        folder = "mito-train-v2" if z < 3 else "mito-val-v2"
        (r / folder).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(r / folder / f"seg{z:04d}.tif", ids[z])
    h = root / "MitoEM-H"
    h.mkdir(parents=True)
    write_volume(h / "im_train.h5", stack[:3])  # key "main"
    with h5py.File(h / "mito_train.h5", "w") as f:
        f["seg"] = ids[:3]  # the only dataset
    assert list_splits("mitoem", root) == ["R-train", "R-val", "H-train"]
    img, lab = load_split("mitoem", root, "R-val")
    np.testing.assert_array_equal(img, stack[3:5])
    np.testing.assert_array_equal(lab, (ids[3:5] > 0).astype(np.uint8))
    assert split_files("mitoem", root, "R-val").z_range == (3, 5)
    img, lab = load_split("mitoem", root, "H-train")
    np.testing.assert_array_equal(img, stack[:3])
    np.testing.assert_array_equal(lab, (ids[:3] > 0).astype(np.uint8))
    sf = split_files("mitoem", root, "H-train")
    assert (sf.image_key, sf.label_key) == ("main", "seg")
    info = dataset_info("mitoem", root)
    assert info["H-train"]["label_foreground_fraction"] == pytest.approx((ids[:3] > 0).mean())
    assert info["R-train"]["image_shape"] == [3, 6, 5]

    (r / "im" / "im0001.png").unlink()
    with pytest.raises(DataError, match=r"images of slices 1 are missing"):
        load_split("mitoem", root, "R-train")
    (r / "mito-val-v2" / "seg0004.tif").unlink()
    with pytest.raises(DataError, match=r"labels of slices 4 are missing"):
        load_split("mitoem", root, "R-val")


# ----------------------------------------------------------------------------------------------
# folder
# ----------------------------------------------------------------------------------------------
def test_folder_layout_single_split(tmp_path):
    image, label = _volume(11)
    root = tmp_path / "ds"
    write_volume(root / "images", image)  # PNG slices
    write_volume(root / "labels.tif", label * 7)
    assert list_splits("folder", root) == ["all"]
    img, lab = load_split("folder", root, "all")
    np.testing.assert_array_equal(img, image)
    np.testing.assert_array_equal(lab, label)


def test_folder_layout_split_subfolders_and_optional_labels(tmp_path):
    root = tmp_path / "ds"
    tr, va = _volume(12), _volume(13, (2, 8, 10))
    write_volume(root / "train" / "images.h5", tr[0])
    write_volume(root / "train" / "labels.nii.gz", tr[1])
    write_volume(root / "val" / "images" / "stack.tif", va[0])  # a folder holding one volume file
    (root / "notes").mkdir(parents=True)  # a folder without images is not a split
    assert list_splits("folder", root) == ["train", "val"]
    img, lab = load_split("folder", root, "train")
    np.testing.assert_array_equal(img, tr[0])
    np.testing.assert_array_equal(lab, tr[1])
    img, lab = load_split("folder", root, "val")
    np.testing.assert_array_equal(img, va[0])
    assert lab is None
    assert dataset_info("folder", root)["val"]["label_foreground_fraction"] is None
    with pytest.raises(DataError, match=r"unknown split 'all'.*train, val"):
        load_split("folder", root, "all")


def test_folder_layout_without_images(tmp_path):
    (tmp_path / "ds" / "stuff").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no 'images' folder or file"):
        list_splits("folder", tmp_path / "ds")


# ----------------------------------------------------------------------------------------------
# EMSliceDataset
# ----------------------------------------------------------------------------------------------
def test_em_slice_dataset(tmp_path):
    from mito_monai.datasets import EMSliceDataset
    from mito_monai.datasets.slices import clear_slice_cache

    image, label = _volume(14, (5, 8, 10))
    root = make_vnc3(tmp_path / "vnc3", image, label)
    ds = EMSliceDataset("vnc3", root, "train")
    assert len(ds) == 5
    item = ds[3]
    assert set(item) == {"image", "label", "slice_index", "volume"}
    assert item["image"].dtype == np.float32 and item["image"].shape == (1, 8, 10)
    np.testing.assert_array_equal(item["image"][0], image[3].astype(np.float32))  # not normalised
    assert item["label"].dtype == np.uint8
    np.testing.assert_array_equal(item["label"][0], label[3])
    assert item["slice_index"] == 3 and item["volume"] == "vnc3/train"
    item["image"][:] = -1  # items are copies: the dataset is unaffected
    item["label"][:] = 9
    assert ds[3]["image"].min() >= 0 and ds.label.max() == 1

    part = EMSliceDataset("vnc3", root, "train", slices=[4, 1], with_label=False, transform=lambda d: {**d, "t": 1})
    assert [part[i]["slice_index"] for i in range(len(part))] == [4, 1]
    assert "label" not in part[0] and part[0]["t"] == 1 and part.label is None
    assert part.image is ds.image  # the unlabelled view of a split reuses the labelled split's volume
    np.testing.assert_array_equal(part[1]["image"][0], image[1])

    again = EMSliceDataset("vnc3", root, "train")
    assert again.image is ds.image  # shared through the cache
    assert EMSliceDataset("vnc3", root, "train", cache=False).image is not ds.image
    clear_slice_cache()
    with pytest.raises(ValueError, match="out of range"):
        EMSliceDataset("vnc3", root, "train", slices=[5])
    with pytest.raises(TypeError, match="integers"):
        EMSliceDataset("vnc3", root, "train", slices=[1.5])
    with pytest.raises(DataError, match="unknown dataset layout"):
        EMSliceDataset("nope", root, "train")


def _zarr_folder_datasets(tmp_path, image, label):
    """The same voxels as a TIFF folder-layout dataset and as zarr / OME-Zarr ones (several arrangements)."""
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    from mito_monai.io import create_ome_zarr_image

    write_volume(tmp_path / "tif" / "images.tif", image)
    write_volume(tmp_path / "tif" / "labels.tif", label * 255)
    # root/images.zarr (zarr v3 array) + root/labels.ome.zarr (OME-Zarr written by the ome-zarr library)
    zarr.create_array(tmp_path / "z1" / "images.zarr", shape=image.shape, chunks=(2, 8, 8), dtype=image.dtype,
                      zarr_format=3)[:] = image
    write_image(label[None] * 255, zarr.open_group(tmp_path / "z1" / "labels.ome.zarr", mode="w", zarr_format=2),
                axes="czyx", fmt=FormatV04(), scale_factors=(), scale={"z": 30.0, "y": 5.0, "x": 5.0})
    # root/train/images/ is itself a zarr v2 store; root/train/labels/ a folder holding one OME-Zarr store
    zarr.create_array(tmp_path / "z2" / "train" / "images", shape=image.shape, chunks=(3, 5, 5), dtype=image.dtype,
                      zarr_format=2)[:] = image
    create_ome_zarr_image(tmp_path / "z2" / "train" / "labels" / "mask.zarr", "mask", label.shape, np.uint8,
                          (1, 16, 16))[...] = label
    return tmp_path / "tif", tmp_path / "z1", tmp_path / "z2"


def test_zarr_datasets_train_like_tiff(tmp_path):
    """The training datasets, dataset-info and partitions read a zarr / OME-Zarr stack exactly as the same TIFF."""
    import torch
    from monai.data import DataLoader
    from monai.utils import set_determinism

    from mito_monai.datasets import EMSliceDataset, partition_split
    from mito_monai.transforms import train_transforms

    image, label = _volume(21, (6, 20, 24))
    tif, z1, z2 = _zarr_folder_datasets(tmp_path, image, label)
    assert list_splits("folder", z1) == ["all"] and list_splits("folder", z2) == ["train"]
    info_tif = dataset_info("folder", tif)["all"]
    for root, split in ((z1, "all"), (z2, "train")):
        info = dataset_info("folder", root)[split]
        assert {k: info[k] for k in ("image_shape", "dtype", "label_foreground_fraction")} == \
            {k: info_tif[k] for k in ("image_shape", "dtype", "label_foreground_fraction")}
        img, lab = load_split("folder", root, split)
        np.testing.assert_array_equal(img, image)
        np.testing.assert_array_equal(lab, label)
        assert partition_split("folder", root, split, "1/2", seed=0) == partition_split("folder", tif, "all", "1/2", seed=0)

    def batches(root, split):
        set_determinism(seed=0)
        ds = EMSliceDataset("folder", root, split, transform=train_transforms(crop_size=(16, 16)), cache=False)
        out = [b for b in DataLoader(ds, batch_size=2, shuffle=True, num_workers=0)]
        set_determinism(seed=None)
        return out

    reference = batches(tif, "all")
    for root, split in ((z1, "all"), (z2, "train")):
        got = batches(root, split)
        assert len(got) == len(reference) == 3
        for a, b in zip(got, reference):
            assert torch.equal(a["slice_index"], b["slice_index"])
            assert torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(b["image"]))
            assert torch.equal(torch.as_tensor(a["label"]), torch.as_tensor(b["label"]))
        assert torch.as_tensor(got[0]["label"]).max() == 1  # labels binarised, as from the TIFF


def test_zarr_dataset_bad_input_names_the_store(tmp_path):
    import zarr

    image, label = _volume(22, (4, 8, 10))
    root = tmp_path / "ds"
    zarr.create_array(root / "images.zarr", shape=image.shape, chunks=(2, 8, 8), dtype=image.dtype)[:] = image
    zarr.create_array(root / "labels.zarr", shape=(4, 8, 9), chunks=(2, 8, 8), dtype=np.uint8)[:] = 0
    with pytest.raises(DataError, match=r"images.zarr has shape \(4, 8, 10\) but label .*labels.zarr has shape \(4, 8, 9\)"):
        load_split("folder", root, "all")
    zarr.create_array(root / "x" / "images.zarr", shape=(2, 4, 8, 10), chunks=(1, 2, 8, 8), dtype=np.uint8)
    with pytest.raises(DataError, match=r"images.zarr: array of shape \(2, 4, 8, 10\).*expected a 3D"):
        load_split("folder", root / "x", "all")
    bad = tmp_path / "nan"
    zarr.create_array(bad / "images.zarr", shape=(2, 4, 4), chunks=(2, 4, 4), dtype=np.float32)[:] = np.nan
    with pytest.raises(DataError, match=r"images.zarr: 32 of 32 voxels are NaN"):
        load_split("folder", bad, "all")
