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


def test_readme_test_command_is_what_ci_runs():
    """One test command everywhere: the README's is the setup script then pytest, and ``.ci/run`` runs the same
    two after installing the extras (whose tests otherwise skip with the reason)."""
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/setup.sh && python -m pytest -q" in readme
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert "bash scripts/setup.sh" in ci and ci[-1] == "python -m pytest -q"
    assert ci.index("bash scripts/setup.sh") < ci.index("python -m pytest -q")


def test_design_facts_are_cited_from_the_repository():
    """Code and docs cite ``docs/design.md`` (in the repository), never a design file outside it."""
    import re

    assert (ROOT / "docs" / "design.md").is_file()
    pattern = re.compile(r"\bDESIGN(\.md)?\b")
    cited = [
        str(path.relative_to(ROOT))
        for folder in ("mito_monai", "scripts", "tests", "bundles", "docs")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in (".py", ".md", ".json") and path.name != "test_repository.py" and pattern.search(path.read_text())
    ] + [name for name in ("README.md",) if pattern.search((ROOT / name).read_text())]
    assert cited == []
