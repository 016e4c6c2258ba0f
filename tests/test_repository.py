"""Repository-wide conventions that no other test covers."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_licence_is_stated_once_not_per_file():
    """The licence (Apache-2.0) is stated in LICENSE and pyproject.toml; no source file carries a header of its
    own, so that every module is treated alike."""
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert 'license = {text = "Apache-2.0"}' in (ROOT / "pyproject.toml").read_text()
    headed = [
        str(path.relative_to(ROOT))
        for folder in ("mito_monai", "scripts", "tests")
        for path in (ROOT / folder).rglob("*.py")
        if any(line.startswith(("# Copyright", "# Licensed under")) for line in path.read_text().splitlines()[:15])
    ]
    assert headed == []
