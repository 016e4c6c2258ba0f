"""The label-free rule that chooses an adaptation setting (mito_monai.setting_choice, CLI choose-setting)."""

from __future__ import annotations

import json

import pytest

from mito_monai.cli import main
from mito_monai.setting_choice import choose_default, choose_setting, find_final_metrics, label_free_scores, resolve_source_fraction


def _write_run(root, name, seed, agreement, fg, iou):
    path = root / name / f"baseline_seed{seed}" / "eval" / "final_metrics.json"
    path.parent.mkdir(parents=True)
    history = [{"iteration": 250, "agreement": 0.99, "foreground_fraction": fg}, {"iteration": 500, "agreement": agreement, "foreground_fraction": fg}]
    path.write_text(json.dumps({"seed": seed, "metrics": {"IoU": iou}, "selection": {"history": history}}))
    return path


def test_rule_takes_highest_agreement_among_plausible_means():
    # q = 0.05 -> band [0.025, 0.10]; "wide" has the highest agreement but predicts 12 % (implausible)
    runs = {
        "a": [{"seed": 0, "agreement": 0.80, "foreground_fraction": 0.04}, {"seed": 1, "agreement": 0.90, "foreground_fraction": 0.06}],
        "b": [{"seed": 0, "agreement": 0.86, "foreground_fraction": 0.05}, {"seed": 1, "agreement": 0.86, "foreground_fraction": 0.05}],
        "wide": [{"seed": 0, "agreement": 0.95, "foreground_fraction": 0.12}, {"seed": 1, "agreement": 0.95, "foreground_fraction": 0.12}],
    }
    out = choose_setting(runs, 0.05)
    assert out["plausible_band"] == pytest.approx([0.025, 0.10])
    assert out["candidates"]["a"]["agreement"] == pytest.approx(0.85)
    assert out["candidates"]["a"]["foreground_fraction"] == pytest.approx(0.05)
    assert [out["candidates"][n]["plausible"] for n in ("a", "b", "wide")] == [True, True, False]
    assert out["choice"] == "b"  # mean 0.86 > 0.85
    assert out["per_seed"] == {"0": "b", "1": "a"}
    assert "best_in_hindsight" not in out
    # a wider band admits "wide"
    assert choose_setting(runs, 0.05, band=3.0)["choice"] == "wide"


def test_rule_returns_none_when_no_candidate_is_plausible():
    out = choose_setting({"collapse": [{"seed": 0, "agreement": 0.99, "foreground_fraction": 0.001}]}, 0.05)
    assert out["choice"] is None and out["per_seed"] == {"0": None}


@pytest.mark.parametrize(
    "candidates, q, band, match",
    [({}, 0.05, 2.0, "at least one"), ({"a": []}, 0.05, 2.0, "no runs"), ({"a": [{}]}, 1.5, 2.0, r"\(0, 1\)"), ({"a": [{}]}, 0.05, 1.0, "band")],
)
def test_rule_rejects_bad_arguments(candidates, q, band, match):
    with pytest.raises(ValueError, match=match):
        choose_setting(candidates, q, band=band)


def test_files_scores_and_hindsight_never_change_the_choice(tmp_path):
    _write_run(tmp_path, "good_test", 0, agreement=0.80, fg=0.05, iou=0.70)
    _write_run(tmp_path, "good_agreement", 0, agreement=0.90, fg=0.05, iou=0.40)
    files = find_final_metrics(tmp_path / "good_test")
    assert files == [tmp_path / "good_test" / "baseline_seed0" / "eval" / "final_metrics.json"]
    # the last check is read, not the best one
    assert label_free_scores(files[0])["agreement"] == 0.80
    assert "IoU" not in label_free_scores(files[0])
    runs = {n: [label_free_scores(f, hindsight=True) for f in find_final_metrics(tmp_path / n)] for n in ("good_test", "good_agreement")}
    out = choose_setting(runs, 0.05)
    assert out["choice"] == "good_agreement" and out["best_in_hindsight"] == "good_test"


def test_scores_name_the_file_without_selection_history(tmp_path):
    path = tmp_path / "final_metrics.json"
    path.write_text(json.dumps({"metrics": {"IoU": 0.5}}))
    with pytest.raises(ValueError, match="final_metrics.json.*selection"):
        label_free_scores(path)
    with pytest.raises(FileNotFoundError, match="missing"):
        find_final_metrics(tmp_path / "missing")


def test_source_fraction_from_number_or_model_card(tmp_path):
    card = tmp_path / "source.json"
    card.write_text(json.dumps({"source_foreground_fraction": 0.0539}))
    assert resolve_source_fraction(str(card)) == 0.0539
    assert resolve_source_fraction("0.07") == 0.07
    with pytest.raises(ValueError, match="source_foreground_fraction"):
        resolve_source_fraction(str(tmp_path / "nothing.json"))


def test_cli_prints_and_writes_the_choice(tmp_path, capsys):
    for seed, (ag, fg) in enumerate([(0.85, 0.05), (0.87, 0.06)]):
        _write_run(tmp_path, "recommended", seed, ag, fg, 0.5)
    for seed, (ag, fg) in enumerate([(0.90, 0.30), (0.91, 0.30)]):
        _write_run(tmp_path, "oversegment", seed, ag, fg, 0.3)
    out = tmp_path / "rule.json"
    argv = ["choose-setting", f"recommended={tmp_path}/recommended", f"oversegment={tmp_path}/overseg*", "--source_fraction", "0.05", "--output", str(out)]
    main(argv)
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["choice"] == "recommended" and printed["candidates"]["oversegment"]["plausible"] is False
    assert printed["candidates"]["recommended"]["seeds"] == [0, 1]
    with pytest.raises(SystemExit):  # the file exists: kept
        main(argv)
    assert "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["choose-setting", "no_equals_sign", "--source_fraction", "0.05"])
    assert "NAME=RUNS" in capsys.readouterr().err


def _pair(q, **scores):
    return choose_setting({n: [{"seed": 0, "agreement": ag, "foreground_fraction": fg, "IoU": iou}] for n, (ag, fg, iou) in scores.items()}, q)


def test_default_is_plausible_on_every_pair_with_the_highest_mean_agreement():
    # pair A picks "x" (0.90 > 0.88), pair B picks "y" (0.89 > 0.84): averaged, y 0.885 > x 0.87;
    # "z" has the best mean agreement (0.93) but over-segments pair B (fg 0.20 > 2 * 0.07)
    a = _pair(0.05, x=(0.90, 0.05, 0.6), y=(0.88, 0.05, 0.5), z=(0.92, 0.06, 0.7))
    b = _pair(0.07, x=(0.84, 0.07, 0.5), y=(0.89, 0.07, 0.4), z=(0.94, 0.20, 0.3))
    assert (a["choice"], b["choice"]) == ("z", "y")
    out = choose_default({"A": a, "B": b})
    assert out["candidates"]["x"]["agreement"] == pytest.approx(0.87)
    assert out["candidates"]["y"]["per_pair"] == {"A": pytest.approx(0.88), "B": pytest.approx(0.89)}
    assert out["candidates"]["z"]["plausible_on_every_pair"] is False
    assert out["choice"] == "y"
    assert out["per_pair_choice"] == {"A": "z", "B": "y"}
    # hindsight: mean IoU x 0.55, y 0.45, z 0.50 -> x; it is reported and did not change the choice
    assert out["best_in_hindsight"] == "x"
    assert choose_default({"A": a})["choice"] == "z"


def test_default_rejects_mismatched_or_empty_pairs():
    a = _pair(0.05, x=(0.9, 0.05, 0.5))
    b = _pair(0.05, y=(0.9, 0.05, 0.5))
    with pytest.raises(ValueError, match="same candidates"):
        choose_default({"A": a, "B": b})
    with pytest.raises(ValueError, match="at least one"):
        choose_default({})
    with pytest.raises(ValueError, match="'B'.*candidates"):
        choose_default({"A": a, "B": {}})


def test_cli_chooses_the_default_from_the_pairs_files(tmp_path, capsys):
    files = []
    for pair, (ag_x, ag_y) in {"A": (0.90, 0.88), "B": (0.84, 0.89)}.items():
        for name, ag in (("x", ag_x), ("y", ag_y)):
            _write_run(tmp_path / pair, name, 0, ag, 0.05, 0.5)
        path = tmp_path / f"{pair}.json"
        main(["choose-setting", f"x={tmp_path / pair}/x", f"y={tmp_path / pair}/y", "--source_fraction", "0.05", "--output", str(path)])
        files.append(f"{pair}={path}")
    capsys.readouterr()
    main(["choose-default", *files, "--output", str(tmp_path / "default.json")])
    printed = json.loads(capsys.readouterr().out)
    assert printed["choice"] == "y" and printed == json.loads((tmp_path / "default.json").read_text())
    with pytest.raises(SystemExit):
        main(["choose-default", f"A={tmp_path / 'missing.json'}"])
    assert "missing.json" in capsys.readouterr().err
