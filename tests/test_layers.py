"""The package's layer order, checked on the source: a module imports only from its own layer's package or below.

Layers, lowest first: io < datasets, runtime, ops < transforms, networks, losses, metrics < inference, engines <
morphology < visualize < export, handlers < tracking, napari_plugin < cli < __main__. Packages of one layer do not import each
other (so ``inference`` imports no engine or handler), and ``export`` imports neither engines nor handlers.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mito_monai"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("io",),
    ("datasets", "runtime", "ops"),
    ("transforms", "networks", "losses", "metrics"),
    ("inference", "engines"),
    ("morphology",),  # measures what inference labels; the report (visualize) draws its table
    ("visualize",),
    ("export", "handlers"),
    ("tracking", "setting_choice", "napari_plugin"),
    ("cli",),
    ("__main__",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
#: imports forbidden on top of the order: loading weights for inference or export never imports training
FORBIDDEN: dict[str, frozenset[str]] = {
    "inference": frozenset({"engines", "handlers"}),
    "export": frozenset({"engines", "handlers"}),
}


def _package_of(path: Path, root: Path) -> str:
    parts = path.relative_to(root).parts
    return parts[0][: -len(".py")] if len(parts) == 1 else parts[0]


def _imported_packages(path: Path) -> set[str]:
    """The top-level ``mito_monai`` packages a module imports (anywhere in it, lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith("mito_monai.")}
    return found


def layer_violations(root: Path) -> list[str]:
    """``"module imports package"`` for every import that goes up or sideways in :data:`LAYERS`."""
    out = []
    for path in sorted(root.rglob("*.py")):
        own = _package_of(path, root)
        if own == "__init__":
            continue
        if own not in RANK:
            out.append(f"{path.relative_to(root)}: package {own!r} has no layer in LAYERS")
            continue
        for other in sorted(_imported_packages(path) - {own}):
            if other not in RANK or RANK[other] >= RANK[own] or other in FORBIDDEN.get(own, ()):
                out.append(f"{path.relative_to(root)} imports mito_monai.{other}")
    return out


def test_every_import_goes_down_the_layers():
    assert layer_violations(PACKAGE) == []


@pytest.mark.parametrize(
    "module, source",
    [
        ("inference/wrong.py", "from mito_monai.handlers import AtomicCheckpointSaver\n"),
        ("export/wrong.py", "def f():\n    import mito_monai.engines\n"),
        ("io/wrong.py", "from mito_monai.datasets import LAYOUTS\n"),
        ("runtime/wrong.py", "from mito_monai.inference import StackSegmenter\n"),
    ],
)
def test_a_wrong_import_in_a_temporary_module_is_found(tmp_path, module, source):
    copy = tmp_path / "mito_monai"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / module).write_text(source)
    assert layer_violations(copy) == [f"{Path(module)} imports mito_monai.{source.split('mito_monai.')[1].split()[0]}"]


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}
