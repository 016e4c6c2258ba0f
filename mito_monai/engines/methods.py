"""Method presets: which loss terms a method switches on.

NoAdapt, Oracle, the CAFA-style baseline and R4MITO are one trainer (``DomainAdaptationTrainer``) with
different terms (docs/design.md section 2); supervised-only, Mean Teacher, CPS and DualRel are another
(``SemiSupervisedTrainer``). The branch-0 supervised term ``sup`` is always on and not listed.
"""

from __future__ import annotations

__all__ = ["CAFA_CODE_TERMS", "METHODS", "SSL_METHODS", "SSL_TERMS", "UNSUPERVISED_TERMS", "method_terms", "supervised_domain"]

#: the unsupervised terms, in the order the trainer computes them
UNSUPERVISED_TERMS = ("cf", "reg", "pro", "corr", "rank", "compact", "sep", "align")

#: the terms taken from the public CAFA code rather than the papers' text (prototype alignment, docs/design.md section 3.7):
#: switches on top of any method, off in every preset
CAFA_CODE_TERMS = ("compact", "sep", "align")

#: method name -> the unsupervised terms it uses
METHODS: dict[str, tuple[str, ...]] = {
    "noadapt": (),
    "oracle": (),
    "baseline": ("cf", "reg"),
    "r4mito": ("cf", "reg", "pro", "corr", "rank"),
}

#: the semi-supervised terms: the second branch's supervised term, Mean-Teacher consistency, cross
#: pseudo supervision, reliable prototype consistency and prototype diversity (of each branch)
SSL_TERMS = ("sup_1", "mt", "cps", "rpc", "div", "div_1")

#: semi-supervised method name -> the terms it uses (on top of the branch-0 supervised term)
SSL_METHODS: dict[str, tuple[str, ...]] = {
    "supervised": (),
    "meanteacher": ("mt",),
    "cps": ("sup_1", "cps"),
    "dualrel": ("sup_1", "rpc", "div", "div_1"),
}


def _check(method: str, table: dict | None = None) -> str:
    key = str(method).lower().replace("-", "").replace("_", "")
    known = {**METHODS, **SSL_METHODS} if table is None else table
    if key not in known:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(known)}.")
    return key


def method_terms(method: str) -> tuple[str, ...]:
    """The loss terms ``method`` switches on besides ``sup``.

    Domain adaptation (a subset of ``UNSUPERVISED_TERMS``): ``noadapt``, ``oracle``, ``baseline``, ``r4mito``.
    Semi-supervised (a subset of ``SSL_TERMS``): ``supervised``, ``mean_teacher``, ``cps``, ``dualrel``.
    Case, ``-`` and ``_`` are ignored.
    """
    key = _check(method)
    return METHODS[key] if key in METHODS else SSL_METHODS[key]


def supervised_domain(method: str) -> str:
    """Where the supervised term takes its labels from: ``"target"`` for Oracle, else ``"source"``."""
    return "target" if _check(method, METHODS) == "oracle" else "source"
