"""Method presets: which loss terms a method switches on.

NoAdapt, Oracle, the CAFA-style baseline and R4MITO are one trainer with different terms
(DESIGN.md section 2). ``sup`` is always on; the others act on the unlabelled target.
"""

from __future__ import annotations

__all__ = ["METHODS", "UNSUPERVISED_TERMS", "method_terms", "supervised_domain"]

#: the unsupervised terms, in the order the trainer computes them
UNSUPERVISED_TERMS = ("cf", "reg", "pro", "corr", "rank")

#: method name -> the unsupervised terms it uses
METHODS: dict[str, tuple[str, ...]] = {
    "noadapt": (),
    "oracle": (),
    "baseline": ("cf", "reg"),
    "r4mito": ("cf", "reg", "pro", "corr", "rank"),
}


def _check(method: str) -> str:
    key = str(method).lower().replace("-", "").replace("_", "")
    if key not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}.")
    return key


def method_terms(method: str) -> tuple[str, ...]:
    """The unsupervised loss terms that ``method`` switches on (a subset of ``UNSUPERVISED_TERMS``)."""
    return METHODS[_check(method)]


def supervised_domain(method: str) -> str:
    """Where the supervised term takes its labels from: ``"target"`` for Oracle, else ``"source"``."""
    return "target" if _check(method) == "oracle" else "source"
