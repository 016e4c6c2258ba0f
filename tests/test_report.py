"""The run report: history file, report data, every figure from tiny bundle runs, MLflow artifacts, the HTML in
a real headless browser, and ``compare --plot``."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from mito_monai.datasets import make_demo_data
from mito_monai.io import DataError
from mito_monai.visualize import FIGURE_FILES, ReportData, SliceStatistics, append_history_record, pick_examples, read_history
from mito_monai.visualize.figures import ERROR_COLOURS, error_overlay

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
R4MITO_TINY = {
    "channels": [4, 8, 16, 32], "crop_size": [32, 32], "batch_size": 2, "epoch_length": 2, "num_iterations": 4,
    "val_interval": 1, "log_interval": 1, "infer_roi": [64, 64], "num_agents": 8, "agent_pool_stride": 2,
}
DUALREL_TINY = {
    "encoder_depth": 10, "embed_dim": 8, "decoder_channels": [8, 8, 8, 8, 8], "num_filters": 4, "num_references": 4,
    "infer_roi": [64, 64], "crop_size": [64, 64], "batch_size": 2, "epoch_length": 1, "num_iterations": 2,
    "val_interval": 100, "log_interval": 1,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train(bundle: str, tmp: Path, demo: Path, **overrides) -> Path:
    from monai.bundle import run

    tiny = R4MITO_TINY if bundle == "r4mito" else DUALREL_TINY
    configs = REPO / "bundles" / bundle / "configs"
    run(
        "training", config_file=str(configs / "train.json"), meta_file=str(configs / "metadata.json"), logging_file=False,
        dataset_dir=str(demo), ckpt_dir=str(tmp / "models"), output_dir=f"$'{tmp / 'eval'}'", **{**tiny, **overrides},
    )
    return tmp / "eval"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("demo"), num_slices=3, size=128)


@pytest.fixture(scope="module")
def r4mito_run(tmp_path_factory, demo) -> Path:
    """A tiny R4MITO run tracked in MLflow; returns its eval/ folder."""
    pytest.importorskip("mlflow")
    tmp = tmp_path_factory.mktemp("r4mito_run")
    mp = pytest.MonkeyPatch()
    mp.chdir(REPO)
    try:
        return _train("r4mito", tmp, demo, tracking="mlflow", experiment_name="tiny_report", run_name="r4_tiny")
    finally:
        mp.undo()


# ---- the history file ---------------------------------------------------------------------------------------


def test_history_round_trip_replaces_repeats_and_drops_later_records(tmp_path):
    path = tmp_path / "h.jsonl"
    append_history_record(path, "train", 1, {"loss": 2.0, "weight_cf": 0.0})
    append_history_record(path, "train", 2, {"loss": 1.5, "weight_cf": 0.1})
    append_history_record(path, "validation", 2, {"IoU": 0.3})
    append_history_record(path, "validation", 2, {"IoU": 0.4})  # the final evaluation repeats the last one
    append_history_record(path, "train", 3, {"loss": float("nan")})
    history = read_history(path)
    its, values = history.series("train", "loss")
    assert its.tolist() == [1, 2, 3] and values[:2].tolist() == [2.0, 1.5] and np.isnan(values[2])
    assert history.series("validation", "IoU")[1].tolist() == [0.4]
    assert history.keys("train", "weight_") == ["weight_cf"]
    assert read_history(path, max_iteration=1).series("train", "loss")[0].tolist() == [1]
    path.write_text(path.read_text() + "not json\n")
    with pytest.raises(DataError, match=r"h\.jsonl, line 6"):
        read_history(path)


def test_training_history_handler_restarts_or_keeps_records_on_resume(tmp_path):
    from ignite.engine import Engine, Events

    from mito_monai.handlers import TrainingHistory

    def step(engine, batch):
        return {"loss": torch.tensor(1.0 / engine.state.iteration), "loss_sup": 0.5, "weight_cf": 0.1, "pred": torch.zeros(2)}

    path = tmp_path / "eval" / "history.jsonl"
    trainer, evaluator = Engine(step), Engine(lambda e, b: None)
    evaluator.add_event_handler(Events.COMPLETED, lambda e: e.state.metrics.update(IoU=0.25, per_class={"x": 1}))
    TrainingHistory(path, evaluator=evaluator).attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0]))
    trainer.run([0, 0], max_epochs=2)  # 4 iterations, validation at 2 and 4
    history = read_history(path)
    assert history.series("train", "loss")[0].tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(history.series("train", "loss")[1], [1.0, 0.5, 1 / 3, 0.25])
    assert history.keys("train") == ["loss", "loss_sup", "weight_cf"]  # "pred" is not a scalar of interest
    assert history.series("validation", "IoU")[0].tolist() == [2, 4] and history.keys("validation") == ["IoU"]

    # resumed from iteration 2: the records after it are dropped, the new ones appended
    resumed = Engine(step)
    TrainingHistory(path).attach(resumed)
    resumed.load_state_dict({"iteration": 2, "epoch_length": 2, "max_epochs": 3})
    resumed.run([0, 0])
    history = read_history(path)
    assert history.series("train", "loss")[0].tolist() == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(history.series("train", "loss")[1][2:], [1 / 3, 0.25, 0.2, 1 / 6])
    assert history.series("validation", "IoU")[0].tolist() == [2]
    # a fresh run (iteration 0) starts a new file
    fresh = Engine(step)
    TrainingHistory(path).attach(fresh)
    fresh.run([0], max_epochs=1)
    assert read_history(path).series("train", "loss")[0].tolist() == [1]


# ---- report data ----------------------------------------------------------------------------------------------


def test_slice_statistics_and_example_picks_match_hand_counts():
    label = torch.zeros(3, 1, 4, 4)
    label[:, :, :2, :2] = 1  # 4 foreground pixels per slice
    prob = torch.zeros(3, 1, 4, 4)
    prob[0, :, :2, :2] = 0.9  # perfect: IoU 1
    prob[1, :, :2, :1] = 0.9  # 2 TP, 2 FN: IoU 0.5
    prob[2, :, 2:, 2:] = 0.9  # 4 FP, 4 FN: IoU 0
    stats = SliceStatistics(num_bins=10)
    stats.update(prob[:2], label[:2])
    stats.update(prob[2:], label[2:])
    assert stats.iou == pytest.approx([1.0, 0.5, 0.0])
    cal = stats.calibration()
    assert cal["count"].sum() == 48
    # predicted 1 with confidence 0.9: 4 + 2 + 4 pixels, of which 4 + 2 + 0 right;
    # predicted 0 with confidence 1.0: 12 + 14 + 12 pixels, of which 12 + 12 + 8 right
    assert cal["count"][8] == 10 and cal["correct"][8] == 6 and cal["count"][9] == 38 and cal["correct"][9] == 32
    assert pick_examples(stats.iou) == [("best", 0), ("median", 1), ("worst", 2)]
    assert pick_examples([0.3]) == [("best", 0)]
    assert pick_examples([0.2, 0.9, 0.5, 0.1]) == [("best", 1), ("median", 0), ("worst", 3)]


def test_run_report_keeps_the_first_evaluation_at_the_final_iteration(tmp_path):
    """A later evaluation at the same iteration (e.g. of the label-free selection's weights) is not the final model's."""
    from ignite.engine import Engine, Events

    from mito_monai.handlers import RunReport

    label = torch.zeros(1, 1, 4, 4)
    label[..., :2] = 1
    outputs = iter([label * 10 - 5, label * 10 - 5, -label * 10 + 5])  # foreground logit: right, right, wrong

    def evaluate(engine, batch):
        fg = next(outputs)
        return {"pred": torch.cat([torch.zeros_like(fg), fg], dim=1), "label": label}

    evaluator = Engine(evaluate)
    trainer = Engine(lambda e, b: None)
    report = RunReport(evaluator, tmp_path)
    report.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0]))
    trainer.run([0], max_epochs=2)  # evaluations at iterations 1 and 2
    evaluator.run([0])  # another evaluation at iteration 2, of other weights
    assert report.statistics.iou == [0.0]
    assert report._first_at[2].iou == [1.0] and list(report._first_at) == [2]


def test_error_overlay_colours_tp_fp_fn_distinctly():
    image = np.full((2, 2), 0.5)
    label = np.array([[1, 1], [0, 0]])
    mask = np.array([[1, 0], [1, 0]])
    rgb = error_overlay(image, label, mask, alpha=1.0)
    np.testing.assert_allclose(rgb[0, 0], ERROR_COLOURS["TP"])
    np.testing.assert_allclose(rgb[0, 1], ERROR_COLOURS["FN"])
    np.testing.assert_allclose(rgb[1, 0], ERROR_COLOURS["FP"])
    np.testing.assert_allclose(rgb[1, 1], [0.0, 0.0, 0.0])  # TN keeps the (constant, so black) image
    assert len({tuple(c) for c in ERROR_COLOURS.values()}) == 3


def test_prototype_similarity_and_agent_maps_on_known_features():
    from mito_monai.losses.agents import select_agents
    from mito_monai.visualize.run_report_data import agent_maps, prototype_similarity

    # source: background pixels along e0, mitochondria along e1; target pixels at known angles
    src = torch.zeros(1, 2, 2, 2)
    src[0, 0, 0, :] = 3.0
    src[0, 1, 1, :] = 2.0
    lab = torch.tensor([[[[0, 0], [1, 1]]]])
    tgt = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]]).T.reshape(1, 2, 1, 3)
    sim = prototype_similarity(src, lab, tgt)
    np.testing.assert_allclose(sim[:, 0], [[1.0, 2**-0.5, 0.0], [0.0, 2**-0.5, -1.0]], atol=1e-6)

    feats = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    maps = agent_maps(feats, num_agents=5, pool_stride=1, temperature=0.5, normalize=True, shown=2)
    assert maps["correlations"].shape == (2, 8, 8) and maps["all_positions"].shape == (5, 2)
    unit = torch.nn.functional.normalize(feats, dim=1)
    agents, idx = select_agents(unit, 5)
    rows, cols = np.divmod(idx[0].numpy(), 8)
    np.testing.assert_allclose(maps["all_positions"], np.stack([rows + 0.5, cols + 0.5], 1))
    # brute force: c_ik = softmax over the 5 agents of cos(F_i, a_k) / T, for every pixel i
    for a in range(2):
        for r in range(8):
            for c in range(8):
                logits = torch.stack([unit[0, :, r, c] @ agents[0, k] for k in range(5)]) / 0.5
                assert maps["correlations"][a][r, c] == pytest.approx(torch.softmax(logits, 0)[a].item(), abs=1e-5)


def test_report_data_round_trip_and_bad_file(tmp_path):
    data = ReportData(
        slice_iou=np.array([0.5, 0.25]),
        calibration={"count": np.ones(3), "correct": np.ones(3), "confidence": np.full(3, 0.5)},
        examples=[{"name": "best", "index": 0, "iou": 0.5, "image": np.eye(4), "label": np.eye(4) > 0, "prob": np.eye(4) * 0.75}],
        dualrel={"image": np.eye(4), "activations": np.ones((2, 4, 4)) * 0.5, "reliability": np.array([0.2, 0.8])},
    )
    back = ReportData.load(data.save(tmp_path / "d.npz"))
    assert back.slice_iou.tolist() == [0.5, 0.25] and back.examples[0]["name"] == "best" and back.examples[0]["index"] == 0
    np.testing.assert_allclose(back.examples[0]["prob"], np.eye(4) * 0.75)
    np.testing.assert_allclose(back.dualrel["reliability"], [0.2, 0.8], atol=1e-3)
    assert back.prototypes == {} and back.agents == {}
    (tmp_path / "bad.npz").write_text("nope")
    with pytest.raises(DataError, match="bad.npz"):
        ReportData.load(tmp_path / "bad.npz")


# ---- tiny bundle runs ---------------------------------------------------------------------------------------


def _assert_pngs(folder: Path, keys) -> None:
    for key in keys:
        png = folder / FIGURE_FILES[key][0]
        assert png.is_file() and png.read_bytes()[:8] == PNG_MAGIC, png


def test_r4mito_run_writes_every_figure_and_logs_them_to_mlflow(r4mito_run, tmp_path, capsys):
    import mlflow

    history = read_history(r4mito_run / "history.jsonl")
    for term in ("sup", "cf", "reg", "pro", "corr", "rank"):
        assert history.series("train", f"loss_{term}")[0].tolist() == [1, 2, 3, 4]
    for term in ("cf", "reg", "pro", "corr", "rank"):
        assert history.series("train", f"weight_{term}")[1][-1] == pytest.approx(0.1)
    assert history.series("validation", "IoU")[0].tolist() == [2, 4]
    data = ReportData.load(r4mito_run / "report_data.npz")
    assert len(data.slice_iou) == 3 and [e["name"] for e in data.examples] == ["best", "median", "worst"]
    assert data.examples[0]["iou"] >= data.examples[1]["iou"] >= data.examples[2]["iou"]
    final = json.loads((r4mito_run / "final_metrics.json").read_text())["metrics"]
    assert np.mean(data.slice_iou) == pytest.approx(final["IoU"], abs=1e-6)  # the slices of the final model
    assert data.calibration["count"].sum() == 3 * 128 * 128
    assert data.prototypes["similarity"].shape == (2, 128, 128) and data.prototypes["tau"] == pytest.approx(0.7)
    assert data.agents["correlations"].shape[0] == 4 and data.agents["all_positions"].shape == (8, 2)
    report = r4mito_run / "report" / "report.html"
    _assert_pngs(report.parent, ("loss", "validation", "reliability", "slices", "prototypes", "agents"))
    page = report.read_text()
    assert page.count("src='data:image/png;base64,") == 6 and "IoU" in page and "Jaccard" in page

    uri = "sqlite:///" + str(r4mito_run / "mlruns.db")
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny_report").experiment_id])
    stored = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report.html", "history.jsonl", "final_metrics.json", "report_data.npz"} <= stored
    assert {FIGURE_FILES[k][0] for k in ("loss", "slices", "prototypes", "agents")} <= stored

    from mito_monai.cli import main

    out = tmp_path / "from_mlflow" / "report.html"
    main(["report", "--experiment", "tiny_report", "--run_name", "r4_tiny", "--tracking_uri", uri, "--output", str(out)])
    assert out.read_text().count("data:image/png;base64,") == 6
    capsys.readouterr()
    with pytest.raises(SystemExit):  # never overwrites silently
        main(["report", "--experiment", "tiny_report", "--run_name", "r4_tiny", "--tracking_uri", uri, "--output", str(out)])
    assert "exists" in capsys.readouterr().err

    plot = tmp_path / "iou.png"
    main(["compare", "--experiment", "tiny_report", "--tracking_uri", uri, "--plot", str(plot), "--metric", "IoU"])
    assert plot.read_bytes()[:8] == PNG_MAGIC


def test_report_from_run_dir_and_without_report_data(r4mito_run, tmp_path):
    from mito_monai.cli import main

    run = tmp_path / "run"
    shutil.copytree(r4mito_run, run / "eval", ignore=shutil.ignore_patterns("mlruns*", "report"))
    main(["report", "--run", str(run)])
    assert (run / "eval" / "report" / "report.html").read_text().count("data:image/png;base64,") == 6
    (run / "eval" / "report_data.npz").unlink()
    out = tmp_path / "partial.html"
    main(["report", "--run", str(run / "eval"), "--output", str(out)])
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 2 and "no report_data.npz" in page
    with pytest.raises(SystemExit):
        main(["report", "--run", str(tmp_path / "nothing")])


def test_dualrel_run_draws_activation_maps_and_reliabilities(tmp_path, demo, monkeypatch):
    monkeypatch.chdir(REPO)
    eval_dir = _train("dualrel", tmp_path, demo)
    data = ReportData.load(eval_dir / "report_data.npz")
    assert data.dualrel["activations"].shape == (4, 128, 128)
    assert ((data.dualrel["reliability"] > 0) & (data.dualrel["reliability"] <= 1)).all()
    assert data.prototypes == {} and data.agents == {}
    _assert_pngs(eval_dir / "report", ("loss", "validation", "reliability", "slices", "dualrel"))


def test_compare_plot_draws_each_method(tmp_path):
    from mito_monai.visualize import write_compare_plot

    rows = [
        {"method": "noadapt", "seed": "0", "IoU": 0.4}, {"method": "noadapt", "seed": "1", "IoU": 0.5},
        {"method": "r4mito", "seed": "0", "IoU": 0.6}, {"method": "r4mito", "seed": "1", "IoU": float("nan")},
    ]
    from mito_monai.visualize.figures import compare_figure

    fig = compare_figure(rows, "IoU")
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([45.0, 60.0])  # means over the runs that have the metric
    assert sum(len(c.get_offsets()) for c in ax.collections) == 3  # one point per run
    path = write_compare_plot(rows, "IoU", tmp_path / "c.png")
    with pytest.raises(FileExistsError):
        write_compare_plot(rows, "IoU", path)


# ---- the HTML in a real browser ------------------------------------------------------------------------------


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def test_report_opens_in_headless_chromium_without_missing_images(r4mito_run, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (apt-get install chromium); the browser check of the report is skipped")
    report = (r4mito_run / "report" / "report.html").resolve()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    dom = subprocess.run([*flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'data-images-loaded="6"' in dom and 'data-images-broken="0"' in dom, dom[:500]
    shot = tmp_path / "report_screenshot.png"
    subprocess.run([*flags, "--window-size=1200,2400", f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == PNG_MAGIC and shot.stat().st_size > 10_000
