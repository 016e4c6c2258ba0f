#!/usr/bin/env python
"""Write each bundle's ``train.json``, ``evaluate.json`` and ``inference.json`` from a shared part and a bundle part.

The two bundles (``r4mito``, ``dualrel``) wire most of their configs alike. The wiring they share is written
once, in ``bundles/config_sources/shared/<config>.json``; what a bundle adds or sets differently is in
``bundles/config_sources/<bundle>/<config>.json``. This script merges the two into
``bundles/<bundle>/configs/<config>.json``, the one file the documented commands run (with overlays from
``configs/protocols/`` merged after it, as before), so a bundle is still a plain MONAI bundle.

Merge rules:

- a dict in the bundle part updates the shared dict key by key (dicts are merged recursively; any other
  value replaces the shared one);
- a list of components (dicts with ``_target_``, e.g. ``train#handlers``) is merged by ``_target_``: a
  bundle item updates the shared item of the same ``_target_``, and an item the shared list lacks goes
  after the bundle item before it (first when it is the first); any other list replaces the shared one;
- ``{{bundle}}`` in a string of the shared part stands for the bundle's name;
- the key order of a config already written is kept (so that regenerating changes only what changed), and a
  new key goes after the key before it in its part.

Usage::

    python scripts/generate_bundle_configs.py          # (re)write the configs
    python scripts/generate_bundle_configs.py --check  # exit 1 naming every config that differs

``tests/test_bundle_configs.py`` runs the check, so a config edited by hand (instead of its source) fails the
tests.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SOURCES = REPO / "bundles" / "config_sources"
BUNDLES = ("r4mito", "dualrel")
CONFIGS = ("train", "evaluate", "inference")
PLACEHOLDER = "{{bundle}}"


def _is_component_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) and "_target_" in item for item in value)


def _substitute(value: Any, bundle: str) -> Any:
    if isinstance(value, str):
        return value.replace(PLACEHOLDER, bundle)
    if isinstance(value, dict):
        return {k: _substitute(v, bundle) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, bundle) for v in value]
    return value


def _insert_after(items: list, anchor: int, item: Any) -> int:
    items.insert(anchor + 1, item)
    return anchor + 1


def merge(shared: Any, part: Any) -> Any:
    """``shared`` updated by ``part`` (see the module's merge rules)."""
    if isinstance(shared, dict) and isinstance(part, dict):
        keys = list(shared)
        out = {k: copy.deepcopy(v) for k, v in shared.items()}
        anchor = None
        for key, value in part.items():
            if key in out:
                out[key] = merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
                keys.insert(len(keys) if anchor is None else keys.index(anchor) + 1, key)
            anchor = key
        return {k: out[k] for k in keys}
    if _is_component_list(shared) and _is_component_list(part):
        out = [copy.deepcopy(item) for item in shared]
        targets = [item["_target_"] for item in out]
        if len(set(targets)) != len(targets) or len({item["_target_"] for item in part}) != len(part):
            raise ValueError(f"a component list merged by _target_ repeats a _target_: {targets}")
        anchor = -1
        for item in part:
            target = item["_target_"]
            if target in targets:
                anchor = targets.index(target)
                out[anchor] = merge(out[anchor], item)
            else:
                anchor = _insert_after(out, anchor, copy.deepcopy(item))
                targets.insert(anchor, target)
        return out
    return copy.deepcopy(part)


def keep_order(new: Any, old: Any) -> Any:
    """``new`` with the key order of ``old`` (recursively) where both have a key; new keys after their predecessor."""
    if not (isinstance(new, dict) and isinstance(old, dict)):
        if _is_component_list(new) and _is_component_list(old):
            by_target = {item["_target_"]: item for item in old}
            return [keep_order(item, by_target.get(item["_target_"])) for item in new]
        return new
    keys = [k for k in old if k in new]
    for i, key in enumerate(new):
        if key not in keys:
            before = next((k for k in reversed(list(new)[:i]) if k in keys), None)
            keys.insert(0 if before is None else keys.index(before) + 1, key)
    return {k: keep_order(new[k], old[k]) if k in old else new[k] for k in keys}


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def generate(bundle: str, config: str) -> str:
    """The text of ``bundles/<bundle>/configs/<config>.json`` as the sources define it."""
    shared = _substitute(_read(SOURCES / "shared" / f"{config}.json"), bundle)
    merged = merge(shared, _read(SOURCES / bundle / f"{config}.json"))
    target = REPO / "bundles" / bundle / "configs" / f"{config}.json"
    if target.is_file():
        merged = keep_order(merged, json.loads(target.read_text()))
    return json.dumps(merged, indent=4) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a config differs from its sources")
    args = parser.parse_args(argv)
    stale = []
    for bundle in BUNDLES:
        for config in CONFIGS:
            target = REPO / "bundles" / bundle / "configs" / f"{config}.json"
            text = generate(bundle, config)
            if target.is_file() and target.read_text() == text:
                continue
            stale.append(str(target.relative_to(REPO)))
            if not args.check:
                target.write_text(text)
    if args.check and stale:
        print(
            "these configs differ from bundles/config_sources (edit the sources, then run "
            f"python scripts/generate_bundle_configs.py): {', '.join(stale)}",
            file=sys.stderr,
        )
        return 1
    if not args.check:
        print(f"wrote {', '.join(stale)}" if stale else "every config is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
