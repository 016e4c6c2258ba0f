"""Errors raised by :mod:`mito_monai.io` and :mod:`mito_monai.datasets`."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad input data: a missing, unreadable, malformed or inconsistent file or folder.

    Every problem with user-provided data found by the data layer is raised as this type, with a
    one-line message that names the file or folder, what was expected and what was found. It
    subclasses :class:`ValueError` so generic callers that catch ``ValueError`` keep working.
    """
