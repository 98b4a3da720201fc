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


def check_range(option: str, value, *, minimum=None, above=None, maximum=None, below=None) -> None:
    """Refuse an option value out of range, naming the option: ``--stride must be >= 1, got 0``.

    ``None`` passes (it means "the default"). NaN never passes.

    Raises:
        UserError: ``value`` is below ``minimum``, not above ``above``, over ``maximum`` or not below ``below``.
    """
    if value is None:
        return
    ok = value == value  # NaN is out of every range
    ok = ok and (minimum is None or value >= minimum) and (above is None or value > above)
    ok = ok and (maximum is None or value <= maximum) and (below is None or value < below)
    if ok:
        return
    low = f"[{minimum:g}" if minimum is not None else f"({above:g}" if above is not None else None
    high = f"{maximum:g}]" if maximum is not None else f"{below:g})" if below is not None else None
    if low and high:
        rule = f"in {low}, {high}"
    elif low:
        rule = f">= {minimum:g}" if minimum is not None else f"> {above:g}"
    else:
        rule = f"<= {maximum:g}" if maximum is not None else f"< {below:g}"
    got = f"{value:g}" if isinstance(value, (int, float)) else repr(value)
    raise UserError(f"{option} must be {rule}, got {got}")
