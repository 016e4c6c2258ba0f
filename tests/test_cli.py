"""``python -m mito_monai``: dataset-info and evaluate print JSON; bad input is one clear line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from mito_monai.cli import main
from mito_monai.datasets import make_demo_data
from mito_monai.io import write_volume
from mito_monai.metrics import segmentation_metrics


def _json_out(capsys, argv):
    capsys.readouterr()
    main(argv)
    return json.loads(capsys.readouterr().out)


def test_dataset_info_on_demo(tmp_path, capsys):
    root = make_demo_data(tmp_path / "demo", num_slices=3, size=64)
    info = _json_out(capsys, ["dataset-info", "--name", "lucchi_pp", "--root", str(root / "target")])
    assert set(info) == {"train", "test"}
    assert info["train"]["image_shape"] == [3, 64, 64] and info["train"]["dtype"] == "uint8"
    from mito_monai.datasets import load_split

    _, label = load_split("lucchi_pp", root / "target", "train")
    assert info["train"]["label_foreground_fraction"] == pytest.approx(label.mean())


def test_evaluate_matches_the_metric_functions(tmp_path, capsys):
    rng = np.random.default_rng(0)
    label = (rng.random((3, 16, 16)) > 0.7).astype(np.uint8)
    prob = np.clip(label * 0.6 + rng.random((3, 16, 16)) * 0.5, 0, 1).astype(np.float32)
    label[1] = 0  # a slice without foreground is left out of mAP
    write_volume(tmp_path / "prob.tif", prob)
    write_volume(tmp_path / "labels", label * 255)  # PNG folder, {0, 255}
    out = _json_out(capsys, ["evaluate", "--prediction", str(tmp_path / "prob.tif"), "--label", str(tmp_path / "labels")])
    ref = segmentation_metrics(prob, label)
    assert set(out) >= {"mAP", "F1", "MCC", "IoU", "Dice", "Jaccard", "ECE"}
    for key, value in ref.items():
        assert out[key] == pytest.approx(value), key
    assert out["num_slices_without_foreground"] == 1

    # 8-bit probabilities are read as value / 255
    write_volume(tmp_path / "prob8.tif", np.round(prob * 255).astype(np.uint8))
    out8 = _json_out(capsys, ["evaluate", "--prediction", str(tmp_path / "prob8.tif"), "--label", str(tmp_path / "labels")])
    assert out8["IoU"] == pytest.approx(segmentation_metrics(np.round(prob * 255) / 255, label)["IoU"])


def test_evaluate_bad_input_is_one_line(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "p.tif", np.full((2, 8, 8), 2.0, np.float32))
    tifffile.imwrite(tmp_path / "l.tif", np.zeros((2, 8, 9), np.uint8))
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--prediction", str(tmp_path / "p.tif"), "--label", str(tmp_path / "l.tif")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "p.tif" in err and "l.tif" in err and "[2, 8, 8]" in err
    tifffile.imwrite(tmp_path / "l.tif", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(SystemExit):
        main(["evaluate", "--prediction", str(tmp_path / "p.tif"), "--label", str(tmp_path / "l.tif")])
    assert "expected foreground probabilities in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["dataset-info", "--name", "vnc3", "--root", str(tmp_path / "missing")])
    assert "missing" in capsys.readouterr().err


def test_evaluate_reads_zarr_and_ome_zarr_exactly_as_tiff(tmp_path, capsys):
    import zarr

    from mito_monai.io import create_ome_zarr_image

    rng = np.random.default_rng(5)
    prob = rng.random((3, 16, 20)).astype(np.float32)
    label = (rng.random((3, 16, 20)) > 0.6).astype(np.uint8)
    write_volume(tmp_path / "p.tif", prob)
    write_volume(tmp_path / "l.tif", label * 255)
    zarr.create_array(tmp_path / "p.zarr", shape=prob.shape, chunks=(1, 8, 8), dtype=np.float32)[:] = prob
    create_ome_zarr_image(tmp_path / "l.ome.zarr", "gt", label.shape, np.uint8, (2, 8, 8), (30.0, 5.0, 5.0))[...] = label * 7
    ref = _json_out(capsys, ["evaluate", "--prediction", str(tmp_path / "p.tif"), "--label", str(tmp_path / "l.tif")])
    got = _json_out(capsys, ["evaluate", "--prediction", str(tmp_path / "p.zarr"), "--label", str(tmp_path / "l.ome.zarr")])
    assert got == ref == segmentation_metrics(prob, label)
    zarr.create_array(tmp_path / "nan.zarr", shape=prob.shape, chunks=(1, 8, 8), dtype=np.float32)[:] = np.nan
    with pytest.raises(SystemExit):
        main(["evaluate", "--prediction", str(tmp_path / "nan.zarr"), "--label", str(tmp_path / "l.tif")])
    assert "nan.zarr: 960 of 960 voxels are NaN or infinite" in capsys.readouterr().err


def test_module_entry_point_runs(tmp_path):
    res = subprocess.run([sys.executable, "-m", "mito_monai", "make-demo", "--root", str(tmp_path / "d")],
                         capture_output=True, text=True, check=True)
    assert json.loads(res.stdout)["root"] == str(tmp_path / "d")
    assert (tmp_path / "d" / "source" / "stack1" / "raw").is_dir()


def test_compare_finds_the_bundle_store_holding_the_experiment(tmp_path, monkeypatch, capsys):
    import mlflow

    from mito_monai.cli import compare
    from mito_monai.tracking import BUNDLE_STORES, default_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for store, experiment, jac in zip(BUNDLE_STORES, ("uda", "ssl"), (0.25, 0.75)):
        (tmp_path / store).parent.mkdir(parents=True)
        uri = "sqlite:///" + str(tmp_path / store)
        client = mlflow.MlflowClient(tracking_uri=uri)
        run = client.create_run(client.create_experiment(experiment), run_name=f"{experiment}-run")
        client.log_param(run.info.run_id, "method", experiment)
        client.log_metric(run.info.run_id, "Jaccard", jac)
        client.set_terminated(run.info.run_id)
    assert default_tracking_uri("ssl").endswith(BUNDLE_STORES[1])
    assert default_tracking_uri("uda").endswith(BUNDLE_STORES[0])
    assert default_tracking_uri("nowhere").endswith(BUNDLE_STORES[0])
    compare(experiment="ssl", columns="Jaccard")
    out = capsys.readouterr().out
    assert "| ssl-run | ssl |  | 75.0 |" in out


def test_compare_without_any_store_names_every_store_it_looked_for(tmp_path, monkeypatch):
    from mito_monai.cli import compare
    from mito_monai.tracking import BUNDLE_STORES

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(FileNotFoundError) as err:
        compare(experiment="dualrel")
    for store in BUNDLE_STORES:
        assert str(tmp_path / store) in str(err.value)
    assert not (tmp_path / BUNDLE_STORES[0]).exists()


def test_compare_reports_an_unreadable_store_in_one_line(monkeypatch, capsys):
    from mito_monai.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SystemExit) as stop:
        main(["compare", "--tracking_uri", "nosuchscheme://store"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read the MLflow store nosuchscheme://store: ")
    assert "Traceback" not in err
