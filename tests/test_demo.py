"""Tests of the synthetic demo domains (mito_monai.datasets.demo)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from mito_monai.datasets import dataset_info, default_demo_root, ensure_demo_data, load_split, make_demo_data
from mito_monai.io import DataError
from mito_monai.datasets.demo import DEMO_MARKER, DEMO_VERSION, SOURCE_STYLE, TARGET_STYLE, render_domain

SLICES, SIZE = 8, 128


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("demo") / "d", seed=0, num_slices=SLICES, size=SIZE)


@pytest.fixture(scope="module")
def demo_arrays(demo_root):
    return {
        "source": load_split("vnc3", demo_root / "source", "train"),
        "target_train": load_split("lucchi_pp", demo_root / "target", "train"),
        "target_test": load_split("lucchi_pp", demo_root / "target", "test"),
    }


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_bytes(demo_root, tmp_path):
    again = make_demo_data(tmp_path / "again", seed=0, num_slices=SLICES, size=SIZE)
    first, second = _tree_bytes(demo_root), _tree_bytes(again)
    assert first.keys() == second.keys() and len(first) == 1 + SLICES * 2 + SLICES * 4
    assert all(first[k] == second[k] for k in first)
    other = _tree_bytes(make_demo_data(tmp_path / "other", seed=1, num_slices=SLICES, size=SIZE))
    assert other["source/stack1/raw/00.tif"] != first["source/stack1/raw/00.tif"]


def test_layouts_are_valid_and_reproduce_real_quirks(demo_root, demo_arrays):
    for key, (image, label) in demo_arrays.items():
        assert image.shape == (SLICES, SIZE, SIZE) and image.dtype == np.uint8, key
        assert label.shape == image.shape and set(np.unique(label)) == {0, 1}, key
    modes = {Image.open(p).mode for p in (demo_root / "source" / "stack1" / "mitochondria").iterdir()}
    assert modes == {"1", "L"}  # 1-bit masks beside 8-bit ones, as in VNC III
    assert Image.open(demo_root / "target" / "Test_Out" / "0.png").mode == "RGBA"
    assert sorted(p.name for p in (demo_root / "target" / "Train_Out").iterdir())[:3] == ["0.png", "1.png", "2.png"]
    info = dataset_info("lucchi_pp", demo_root / "target")
    assert info["test"]["image_shape"] == [SLICES, SIZE, SIZE]
    marker = json.loads((demo_root / DEMO_MARKER).read_text())
    assert marker["version"] == DEMO_VERSION and marker["seed"] == 0 and marker["size"] == SIZE


def test_labels_align_with_dark_mitochondria(demo_arrays):
    for key, (image, label) in demo_arrays.items():
        fg, bg = image[label == 1].astype(float), image[label == 0].astype(float)
        assert 0.01 < label.mean() < 0.2, key
        assert fg.mean() < bg.mean() - 30, key  # mitochondria are clearly darker than the rest
        # the label outline sits on the dark mitochondrial membrane: the ring just inside is darker
        # than the ring just outside
        inner = label.astype(bool) & ~ndimage.binary_erosion(label, np.ones((1, 3, 3)))
        outer = ndimage.binary_dilation(label, np.ones((1, 5, 5))) & ~label.astype(bool)
        assert image[inner].mean() < image[outer].mean() - 20, key


def test_mitochondria_extend_smoothly_in_z(demo_arrays):
    for key, (_, label) in demo_arrays.items():
        ious = []
        for z in range(SLICES - 1):
            a, b = label[z].astype(bool), label[z + 1].astype(bool)
            ious.append((a & b).sum() / max(1, (a | b).sum()))
        shuffled = np.roll(label[1:], 17, axis=2).astype(bool)  # same masks, displaced: unrelated
        chance = np.mean(
            [
                (label[z].astype(bool) & shuffled[z]).sum() / max(1, (label[z].astype(bool) | shuffled[z]).sum())
                for z in range(SLICES - 1)
            ]
        )
        assert np.mean(ious) > 0.5 and np.mean(ious) > chance + 0.3, key


def _mean_object_area(label: np.ndarray) -> float:
    areas = []
    for z in range(label.shape[0]):
        lab, n = ndimage.label(label[z])
        if n:
            areas.extend(np.bincount(lab.ravel())[1:].tolist())
    return float(np.mean(areas))


def test_domain_gap_is_measurable(demo_arrays):
    src_img, src_lab = demo_arrays["source"]
    tgt_img, tgt_lab = demo_arrays["target_train"]
    # object scale (pixel size): target mitochondria are much larger in pixels
    assert _mean_object_area(tgt_lab) > 1.8 * _mean_object_area(src_lab)
    # intensity mapping: background levels and contrast differ by a wide margin
    assert src_img[src_lab == 0].mean() - tgt_img[tgt_lab == 0].mean() > 25
    assert src_img.std() > 1.4 * tgt_img.std()
    hist_s = np.bincount(src_img.ravel(), minlength=256) / src_img.size
    hist_t = np.bincount(tgt_img.ravel(), minlength=256) / tgt_img.size
    assert 0.5 * np.abs(hist_s - hist_t).sum() > 0.4  # total-variation distance of the histograms
    # noise and blur: fine-scale residuals differ
    def residual(img):
        return float(np.std(img.astype(float) - ndimage.uniform_filter(img.astype(float), (1, 3, 3))))

    assert abs(residual(src_img) - residual(tgt_img)) > 1.0


def test_distractors_are_unlabelled_dark_organelles_mostly_in_the_target():
    fractions = {}
    for name, style in (("source", SOURCE_STYLE), ("target", TARGET_STYLE)):
        image, label, distractors = render_domain(style, np.random.default_rng(7), SLICES, SIZE)
        assert not (label.astype(bool) & (distractors > 0)).any()  # never labelled
        fractions[name] = (distractors > 0).mean()
        blobs, background = distractors == 2, (label == 0) & (distractors == 0)
        if blobs.any():  # dark blobs are as dark as mitochondria: real distractors
            assert image[blobs].mean() < image[background].mean() - 30
            assert abs(image[blobs].mean() - image[label == 1].mean()) < 30
    assert fractions["target"] > 0.02 and fractions["target"] > 5 * fractions["source"]


def test_make_demo_data_refuses_existing_and_foreign(demo_root, tmp_path):
    with pytest.raises(DataError, match="already holds demo data.*overwrite=True"):
        make_demo_data(demo_root, num_slices=SLICES, size=SIZE)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    with pytest.raises(DataError, match="not empty.*refusing"):
        make_demo_data(foreign, overwrite=True, num_slices=SLICES, size=SIZE)
    with pytest.raises(DataError, match="not mito_monai demo data"):
        ensure_demo_data(foreign, num_slices=SLICES, size=SIZE)
    assert (foreign / "mine.txt").read_text() == "keep" and len(list(foreign.iterdir())) == 1
    with pytest.raises(ValueError, match="size"):
        make_demo_data(tmp_path / "tiny", size=16)


def test_ensure_demo_data_reuses_and_regenerates(tmp_path):
    root = tmp_path / "cache" / "demo"
    first = ensure_demo_data(root, seed=3, num_slices=4, size=64)
    stamp = (first / "source" / "stack1" / "raw" / "00.tif").stat().st_mtime_ns
    marker = (first / DEMO_MARKER).stat().st_mtime_ns
    assert ensure_demo_data(root, seed=3, num_slices=4, size=64) == root
    assert (first / "source" / "stack1" / "raw" / "00.tif").stat().st_mtime_ns == stamp  # reused
    assert (first / DEMO_MARKER).stat().st_mtime_ns == marker
    (root / "target" / "Test_In" / "mask0002.png").unlink()  # incomplete copy -> regenerated
    ensure_demo_data(root, seed=3, num_slices=4, size=64)
    assert (root / "target" / "Test_In" / "mask0002.png").exists()
    ensure_demo_data(root, seed=4, num_slices=4, size=64)  # other parameters -> regenerated
    assert json.loads((root / DEMO_MARKER).read_text())["seed"] == 4
    assert sorted(p.name for p in root.parent.iterdir()) == ["demo"]  # no temporary folders left


def test_default_demo_root(monkeypatch, tmp_path):
    monkeypatch.setenv("MITO_MONAI_DEMO_DIR", str(tmp_path / "here"))
    assert default_demo_root() == tmp_path / "here"
    monkeypatch.delenv("MITO_MONAI_DEMO_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_demo_root() == tmp_path / "xdg" / "mito_monai" / "demo"
