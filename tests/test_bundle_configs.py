"""The bundles' train/evaluate/inference configs are generated from one shared part and a part per bundle."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "generate_bundle_configs.py"


def _generator():
    spec = importlib.util.spec_from_file_location("generate_bundle_configs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_configs_equal_the_generated_ones():
    """Edit ``bundles/config_sources/`` and run ``python scripts/generate_bundle_configs.py``, never the configs."""
    res = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def test_merge_rules():
    gen = _generator()
    shared = {
        "a": 1,
        "b": {"x": 1, "y": 2},
        "handlers": [{"_target_": "H1", "p": 1}, {"_target_": "H2"}],
        "imports": ["$import os"],
        "root": "bundles/{{bundle}}",
    }
    part = {
        "b": {"y": 3, "z": 4},
        "new": 5,
        "handlers": [{"_target_": "H0"}, {"_target_": "H1", "q": 2}, {"_target_": "H3"}],
        "imports": ["$import sys"],
    }
    merged = gen.merge(gen._substitute(shared, "r4mito"), part)
    assert merged == {
        "a": 1,
        "b": {"x": 1, "y": 3, "z": 4},
        "new": 5,
        "handlers": [{"_target_": "H0"}, {"_target_": "H1", "p": 1, "q": 2}, {"_target_": "H3"}, {"_target_": "H2"}],
        "imports": ["$import sys"],
        "root": "bundles/r4mito",
    }
    assert list(merged) == ["a", "b", "new", "handlers", "imports", "root"]
    # a config already written keeps its key order; a new key goes after its predecessor
    kept = gen.keep_order({"a": 1, "c": 3, "b": 2}, {"b": 0, "a": 0})
    assert list(kept) == ["b", "a", "c"]


def test_quick_start_adapts_with_the_recommended_overlay_itself(tmp_path):
    """The quick start's stage 2 reads protocols/adapt_recommended.json: one file, no copy of it in Python."""
    import json
    from pathlib import Path

    import pytest

    from mito_monai.engines import recommended_adaptation

    configs = Path(__file__).resolve().parents[1] / "bundles" / "r4mito" / "configs"
    overlay = json.loads((configs / "protocols" / "adapt_recommended.json").read_text())
    got = recommended_adaptation(configs / "train.json")
    assert got == {k: v for k, v in overlay.items() if k != "_description"} and "teacher" in got
    with pytest.raises(FileNotFoundError, match="adapt_recommended.json does not exist"):
        recommended_adaptation(tmp_path / "train.json")
