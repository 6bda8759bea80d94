"""Errors as a user reads them: one line that names what to fix."""

from __future__ import annotations

from pathlib import Path

__all__ = ["RunsFailed", "one_line"]

# Raised by ckd where a bad value or a missing file enters; their message is the fix.
_USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError)


class RunsFailed(RuntimeError):
    """Some runs of a schedule failed; the others finished and wrote their results."""

    def __init__(self, n_failed: int, n_runs: int, failures_file: Path) -> None:
        super().__init__(f"{n_failed} of {n_runs} runs failed; errors and tracebacks in {failures_file}")
        self.failures_file = failures_file


def one_line(err: BaseException) -> str:
    """The message of a user error (``ValueError``, ``FileNotFoundError``, ``RunsFailed``),
    else the exception's type and message; whitespace folded onto one line."""
    if isinstance(err, (*_USER_ERRORS, RunsFailed)) and str(err):
        text = str(err)
    else:
        text = f"{type(err).__name__}: {err}".rstrip(": ")
    return " ".join(text.split())
