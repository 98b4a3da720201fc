"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (a bad file, a wrong option). The command line
prints it as one line and exits with code 2, without a traceback. Everything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A problem with the user's input, reported as one line naming the file and the fix."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)
