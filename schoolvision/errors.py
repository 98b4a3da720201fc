"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (a bad file, a wrong option). The command line
prints it as one line and exits with code 2, without a traceback. Everything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import re
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


_RULE = re.compile(r"^(?P<name>[-\w]+)(?: \((?P<field>\w+)\))? (?:(?P<op>>=|>|<=|<) (?P<bound>\S+)"
                   r"|in (?P<lo_kind>[\[(])(?P<lo>[^,]+), (?P<hi>[^\])]+)(?P<hi_kind>[\])]))$")


def check_ranges(config, *rules: str) -> None:
    """:func:`check_range` for each of a config's fields, declared as one short rule each.

    A rule is ``"--stride >= 1"``, ``"--threshold in (0, 1)"`` or ``"--variance in (0, 1]"``: the option a
    user types (or a field name, for settings without one) and its range. The field is the option's name with
    ``-`` as ``_``, or named in brackets: ``"--min-area (min_area_m2) >= 0"``.

    Raises:
        UserError: a field is out of its range (the first, in the rules' order).
        ValueError: a rule that does not parse (a bug, not a user's mistake).
    """
    for rule in rules:
        m = _RULE.match(rule)
        if m is None:
            raise ValueError(f"not a range rule: {rule!r}")
        name = m["name"]
        value = getattr(config, m["field"] or name.lstrip("-").replace("-", "_"))
        if m["op"]:
            key = {">=": "minimum", ">": "above", "<=": "maximum", "<": "below"}[m["op"]]
            check_range(name, value, **{key: float(m["bound"])})
        else:
            low = {"[": "minimum", "(": "above"}[m["lo_kind"]]
            high = {"]": "maximum", ")": "below"}[m["hi_kind"]]
            check_range(name, value, **{low: float(m["lo"]), high: float(m["hi"])})
