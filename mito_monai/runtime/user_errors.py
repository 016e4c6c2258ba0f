"""One-line errors for bundle users: ``python -m monai.bundle run ...`` exits with status 2 and the message.

MONAI's bundle runner wraps every failure of a config item in its own exceptions, so the message our code
raised for a bad input (a missing dataset folder, an unreadable checkpoint, a NaN slice) arrives at the
bottom of a long traceback. :func:`report_user_errors`, the first ``initialize`` item of every bundle
config, installs a ``sys.excepthook`` that finds that message in the exception chain, prints it as one line
(``error: ...``) on stderr and exits with status 2, the status of a usage error. Any other exception (a bug)
keeps its full traceback, and so does everything when the environment variable ``MITO_MONAI_DEBUG`` is set
to a non-empty value other than ``0``.
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from types import TracebackType

from monai.utils import OptionalImportError

from mito_monai.io.errors import DataError

__all__ = ["DEBUG_ENV", "USER_ERROR_EXIT_CODE", "report_user_errors", "user_error_message"]

DEBUG_ENV = "MITO_MONAI_DEBUG"
USER_ERROR_EXIT_CODE = 2
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])


def _chain(exc: BaseException):
    """``exc`` and the exceptions it was raised from or during, outermost first (each once)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ if current.__cause__ is not None else current.__context__


def _raised_by_mito_monai(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is code of this package (a deliberate message)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(Path(tb.tb_frame.f_code.co_filename).resolve()).startswith(_PACKAGE_DIR + os.sep)


def user_error_message(exc: BaseException) -> str | None:
    """
    The one-line message meant for the user in ``exc``'s chain, or ``None`` when ``exc`` looks like a bug.

    A user error is, anywhere in the chain (outermost first): a :class:`mito_monai.io.DataError`, a
    ``FileNotFoundError``, a missing package (MONAI's ``OptionalImportError``, ``ModuleNotFoundError``), or
    a ``ValueError`` / ``TypeError`` raised by this package's own code (argument and input checks).
    """
    for item in _chain(exc):
        user_facing = isinstance(item, (DataError, FileNotFoundError, OptionalImportError, ModuleNotFoundError)) or (
            isinstance(item, (ValueError, TypeError)) and _raised_by_mito_monai(item)
        )
        if user_facing:
            text = " ".join(str(item).split()) or type(item).__name__
            return text
    return None


def report_user_errors() -> None:
    """
    Install the hook (idempotent): an uncaught user error prints ``error: <message>`` and exits with status 2.

    Set ``MITO_MONAI_DEBUG=1`` to see the full traceback instead. The process exits through the
    registered ``atexit`` handlers (e.g. MLflow ends its run) and flushed streams.
    """
    if getattr(sys.excepthook, "_mito_monai", False):
        return
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        message = None if os.environ.get(DEBUG_ENV, "") not in ("", "0") else user_error_message(exc)
        if message is None:
            previous(exc_type, exc, tb)
            return
        print(f"error: {message} (set {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(USER_ERROR_EXIT_CODE)

    hook._mito_monai = True  # type: ignore[attr-defined]
    sys.excepthook = hook
