"""Morphology table: analytic shapes, brute-force references, the block grid, empty and bad input, the CLI."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from mito_monai.cli import main
from mito_monai.io import DataError, create_ome_zarr_image, write_volume
from mito_monai.morphology import (
    COLUMNS,
    ArrayVolume,
    StatisticsTask,
    measure_inputs,
    measure_instances,
    object_geometry,
    open_measure_inputs,
    read_table,
    skeleton_statistics,
)
from mito_monai.inference.block_plan import BlockPlan


def _ellipsoid(shape, centre, semi_axes, spacing=(1, 1, 1)) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) * s / a) ** 2 for g, c, a, s in zip(grid, centre, semi_axes, spacing)) <= 1.0


def _measure(labels, spacing=None, image=None, block_shape=(64, 512, 512), **kwargs):
    inputs = open_measure_inputs(ArrayVolume(labels, spacing), None if image is None else ArrayVolume(image))
    return measure_inputs(inputs, block_shape=block_shape, **kwargs)


def _zarr(path, data, voxel_size=None, unit=None, chunks=(4, 16, 16)):
    array = create_ome_zarr_image(path, "v", data.shape, data.dtype, chunks, voxel_size, unit)
    array[...] = data
    return path


@pytest.mark.parametrize("spacing,radius", [((1, 1, 1), 12.0), ((2, 1, 1), 16.0), ((3, 1.5, 1.5), 24.0)])
def test_a_ball_has_its_analytic_volume_and_surface_within_two_percent(spacing, radius):
    shape = tuple(int(2 * radius / s) + 8 for s in spacing)
    centre = [n / 2 + 0.3 for n in shape]  # off the voxel grid
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    ball = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing)) <= radius**2
    table, _ = _measure(ball.astype(np.uint8) * 7, spacing)
    row = table.iloc[0]
    assert row["label"] == 7 and row["voxels"] == ball.sum()
    assert row["volume"] == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.02)
    assert row["surface_area"] == pytest.approx(4 * math.pi * radius**2, rel=0.02)
    assert row["sphericity"] == pytest.approx(1.0, abs=0.03)
    assert row["elongation"] == pytest.approx(1.0, abs=0.03)
    assert not row["touches_border"] and row["neighbours"] == 0


def test_an_ellipsoid_has_its_axis_lengths_and_a_low_sphericity():
    spacing = (2.0, 1.0, 1.0)
    mask = _ellipsoid((30, 60, 90), (15, 30, 45), (20, 14, 36), spacing)  # semi-axes in physical units
    table, _ = _measure(mask.astype(np.int32), spacing)
    row = table.iloc[0]
    assert [row["axis_major"], row["axis_middle"], row["axis_minor"]] == pytest.approx([72, 40, 28], rel=0.03)
    assert row["elongation"] == pytest.approx(72 / 28, rel=0.05)
    a, b, c = 36, 20, 14  # Knud Thomsen's approximation of the ellipsoid's surface (error < 1.1 %)
    p = 1.6075
    area = 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)
    assert row["surface_area"] == pytest.approx(area, rel=0.03)
    sphericity = math.pi ** (1 / 3) * (6 * 4 / 3 * math.pi * a * b * c) ** (2 / 3) / area
    assert row["sphericity"] == pytest.approx(sphericity, rel=0.03) and sphericity < 0.9


def test_touching_balls_are_neighbours_and_a_cut_object_is_flagged_at_the_border():
    shape = (30, 40, 80)
    labels = np.zeros(shape, np.uint16)
    left = _ellipsoid(shape, (15, 20, 20), (8, 8, 8))
    right = _ellipsoid(shape, (15, 20, 36), (8, 8, 8))  # the two balls meet face to face at x = 28
    labels[left], labels[right & ~left] = 1, 2
    labels[_ellipsoid(shape, (15, 20, 60), (6, 6, 6))] = 3  # apart
    labels[_ellipsoid(shape, (15, 38, 75), (6, 6, 6))] = 4  # cut by the y and x borders
    table, summary = _measure(labels)
    table = table.set_index("label")
    assert table["neighbours"].to_dict() == {1: 1, 2: 1, 3: 0, 4: 0}
    assert table["touches_border"].to_dict() == {1: False, 2: False, 3: False, 4: True}
    assert summary["count"] == 4 and summary["count_interior"] == 3


def test_contacts_by_brute_force_and_the_26_neighbourhood():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, size=(6, 9, 10)).astype(np.int64) * (rng.random((6, 9, 10)) < 0.3)
    for connectivity in (6, 26):
        table, _ = _measure(labels, connectivity=connectivity, block_shape=(2, 4, 3))
        offsets = [d for d in np.ndindex(3, 3, 3) if d != (1, 1, 1)]
        offsets = [tuple(v - 1 for v in d) for d in offsets if connectivity == 26 or sum(abs(v - 1) for v in d) == 1]
        touching = {i: set() for i in range(1, 6)}
        for p in zip(*np.nonzero(labels)):
            for d in offsets:
                q = tuple(a + b for a, b in zip(p, d))
                if all(0 <= v < n for v, n in zip(q, labels.shape)) and labels[q] not in (0, labels[p]):
                    touching[int(labels[p])].add(int(labels[q]))
        present = sorted(int(i) for i in np.unique(labels) if i)
        assert table["neighbours"].tolist() == [len(touching[i]) for i in present]
    diagonal = np.zeros((3, 3, 3), np.uint8)
    diagonal[0, 0, 0], diagonal[1, 1, 1] = 1, 2
    assert _measure(diagonal, connectivity=6)[0]["neighbours"].tolist() == [0, 0]
    assert _measure(diagonal, connectivity=26)[0]["neighbours"].tolist() == [1, 1]


def test_additive_columns_equal_a_per_label_brute_force_for_three_block_grids():
    rng = np.random.default_rng(0)
    mask = ndimage.gaussian_filter(rng.random((12, 40, 44)), 1.5) > 0.52
    labels = ndimage.label(mask)[0].astype(np.uint32) * 3  # IDs not consecutive
    image = rng.normal(100, 10, mask.shape).astype(np.float32)
    tables = [_measure(labels, (30, 8, 8), image, block_shape=b, skeleton=True)[0]
              for b in [(64, 512, 512), (5, 16, 12), (3, 7, 40)]]
    for other in tables[1:]:
        pd.testing.assert_frame_equal(other, tables[0])
    table = tables[0]
    ids = sorted(int(i) for i in np.unique(labels) if i)
    assert table["label"].tolist() == ids and len(ids) > 5
    for row in table.itertuples():
        where = labels == row.label
        idx = np.argwhere(where)
        assert row.voxels == where.sum() and row.volume == pytest.approx(where.sum() * 30 * 8 * 8)
        assert [row.box_z0, row.box_y0, row.box_x0] == idx.min(0).tolist()
        assert [row.box_z1, row.box_y1, row.box_x1] == (idx.max(0) + 1).tolist()
        assert [row.centroid_z, row.centroid_y, row.centroid_x] == pytest.approx(idx.mean(0).tolist())
        assert row.mean_intensity == pytest.approx(float(image[where].astype(np.float64).mean()), rel=1e-9)
        border = (idx.min(0) == 0).any() or (idx.max(0) + 1 == labels.shape).any()
        assert row.touches_border == border


def test_solidity_of_an_l_shape_and_the_skeleton_of_a_cross():
    ell = np.ones((20, 40, 40), bool)
    ell[:, 20:, 20:] = False  # an L in (y, x): area 1200 of a hull of 1400 (the square less one triangle)
    assert object_geometry(ell)["solidity"] == pytest.approx(1200 / 1400, rel=0.03)
    assert object_geometry(np.ones((10, 10, 10), bool))["solidity"] == pytest.approx(1.0)
    flat = object_geometry(np.ones((1, 10, 20), bool), (3, 1, 1))  # one slice thick: a 3 x 10 x 20 box
    assert flat["solidity"] == 1.0 and [flat["axis_major"], flat["axis_middle"], flat["axis_minor"]] == pytest.approx(
        [20 * math.sqrt(20 / 12), 10 * math.sqrt(20 / 12), 3 * math.sqrt(20 / 12)], rel=1e-6)  # a box's variance: side^2 / 12
    rod = np.zeros((5, 5, 41), bool)
    rod[1:4, 1:4, :] = True
    branches, length = skeleton_statistics(rod, (1, 1, 2))
    assert branches == 1 and length == pytest.approx(2 * 40, rel=0.1)  # about the rod's length, x steps of 2
    cross = np.zeros((5, 41, 41), bool)
    cross[1:4, 19:22, :] = cross[1:4, :, 19:22] = True
    assert skeleton_statistics(cross)[0] == 4


def test_an_empty_volume_gives_an_empty_table_with_the_header(tmp_path):
    empty = _zarr(tmp_path / "empty.zarr", np.zeros((4, 16, 16), np.uint32))
    result = measure_instances(empty, tmp_path / "t.csv", progress=False, skeleton=True)
    table = pd.read_csv(tmp_path / "t.csv")
    assert len(table) == 0 and list(table.columns) == [c for c in COLUMNS if c not in ("mean_intensity", "mean_probability")]
    assert result["count"] == 0 and result["volume_fraction"] == 0 and result["volume"]["median"] is None


def test_cli_measures_a_zarr_with_its_voxel_size_and_refuses_to_overwrite(tmp_path, capsys):
    shape = (20, 48, 48)
    labels = np.zeros(shape, np.uint64)
    labels[_ellipsoid(shape, (10, 20, 20), (6, 10, 10), (2, 1, 1))] = 1
    probs = np.where(labels > 0, 0.9, 0.1).astype(np.float32)
    _zarr(tmp_path / "inst.zarr", labels, (20, 10, 10), "nanometer")
    _zarr(tmp_path / "p.zarr", probs, (20, 10, 10), "nanometer")
    out = tmp_path / "t.parquet"
    main(["measure", "--instances", str(tmp_path / "inst.zarr"), "--probabilities", str(tmp_path / "p.zarr"),
          "--output", str(out)])
    printed = capsys.readouterr().out
    assert "| instances " in printed and json.loads(printed[printed.index("{"):])["table"] == str(out)
    table = read_table(out)
    assert table["mean_probability"].tolist() == pytest.approx([0.9])
    assert table["volume"].iloc[0] == pytest.approx((labels > 0).sum() * 20 * 10 * 10)
    summary = json.loads((tmp_path / "t_summary.json").read_text())
    assert summary["unit"] == "nanometer" and summary["voxel_size"] == [20, 10, 10]
    assert summary["density_per_um3"] == pytest.approx(1 / (np.prod(shape) * 2000 * 1e-9))
    with pytest.raises(SystemExit):
        main(["measure", "--instances", str(tmp_path / "inst.zarr"), "--output", str(out)])
    assert "exists; pass --overwrite true" in capsys.readouterr().err
    main(["measure", "--instances", str(tmp_path / "inst.zarr"), "--output", str(out), "--overwrite", "true",
          "--voxel_size", "1,1,1", "--plot", str(tmp_path / "p.png")])
    assert read_table(out)["volume"].iloc[0] == (labels > 0).sum() and (tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.parametrize("case", ["float", "mismatch", "shape", "suffix"])
def test_bad_input_is_one_line_naming_the_file(tmp_path, capsys, case):
    labels = np.zeros((4, 16, 16), np.uint16)
    labels[1:3, 4:8, 4:8] = 1
    inst = _zarr(tmp_path / "inst.zarr", labels, (30, 8, 8))
    args = ["measure", "--instances", str(inst), "--output", str(tmp_path / "t.csv")]
    if case == "float":
        args[2] = str(write_volume(tmp_path / "f.tif", labels.astype(np.float32)))
        expected = ["f.tif", "float32", "integer instance IDs"]
    elif case == "mismatch":
        args += ["--image", str(_zarr(tmp_path / "raw.zarr", labels.astype(np.uint8), (40, 8, 8)))]
        expected = ["raw.zarr", "inst.zarr", "[40.0, 8.0, 8.0]", "voxel size"]
    elif case == "shape":
        args += ["--image", str(write_volume(tmp_path / "raw.tif", np.zeros((4, 16, 15), np.uint8)))]
        expected = ["raw.tif", "[4, 16, 15]", "expected the same"]
    else:
        args[-1] = str(tmp_path / "t.xlsx")
        expected = ["t.xlsx", ".csv", ".parquet"]
    with pytest.raises(SystemExit):
        main(args)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and all(e in err for e in expected), err
    assert not (tmp_path / "t.csv").exists()


def test_tasks_are_picklable_and_dask_gives_the_same_table(tmp_path):
    labels = ndimage.label(ndimage.gaussian_filter(np.random.default_rng(2).random((8, 32, 32)), 1.5) > 0.52)[0]
    inst = _zarr(tmp_path / "inst.zarr", labels.astype(np.uint32))
    with open_measure_inputs(inst) as inputs:
        task = StatisticsTask((str(inst), None), None, None, BlockPlan(labels.shape, (4, 16, 16)))
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(task))(3).ids, task(3).ids)
        local, _ = measure_inputs(inputs, block_shape=(4, 16, 16))
        dask, _ = measure_inputs(inputs, block_shape=(4, 16, 16), scheduler="dask", dask_processes=False)
    pd.testing.assert_frame_equal(dask, local)


def test_after_inference_measures_the_mask_and_the_report_draws_it(tmp_path):
    from mito_monai.morphology import measure_segmentation
    from mito_monai.visualize import write_report
    from mito_monai.visualize.morphology import morphology_figure

    seg = tmp_path / "eval" / "segmentation"
    seg.mkdir(parents=True)
    shape = (8, 40, 40)
    mask = (_ellipsoid(shape, (4, 10, 10), (3, 6, 6)) | _ellipsoid(shape, (4, 28, 28), (3, 8, 8))).astype(np.uint8) * 255
    outputs = {"masks": str(write_volume(seg / "masks.tif", mask)),
               "probabilities": str(write_volume(seg / "probabilities.tif", (mask / 255.0).astype(np.float32))),
               "summary": str(seg / "summary.json")}
    image = write_volume(tmp_path / "raw.tif", np.where(mask > 0, 50, 200).astype(np.uint8))
    assert measure_segmentation(outputs, image, measure=False) == outputs
    result = measure_segmentation(outputs, image, block_slices=3, block_tile=16)
    table = read_table(result["measurements"])
    assert result["measurements"] == str(seg / "measurements.csv") and len(table) == 2
    assert table["voxels"].sum() == (mask > 0).sum() and table["mean_intensity"].tolist() == [50, 50]
    with pytest.raises(FileExistsError, match="overwrite"):
        measure_segmentation(outputs, image)
    (tmp_path / "eval" / "final_metrics.json").write_text(json.dumps({"metrics": {"IoU": 0.5}}))
    page = write_report(tmp_path / "eval").read_text()
    assert page.count("data:image/png;base64,") == 1 and (tmp_path / "eval" / "report" / "morphology.png").is_file()
    fig = morphology_figure(table)
    assert sum(p.get_height() for p in fig.axes[0].patches) == 2  # the volume histogram holds every instance
