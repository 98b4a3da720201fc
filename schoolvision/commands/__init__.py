"""One module per CLI command: ``add_arguments(parser)`` and ``run(args) -> exit code``.

Option defaults come from the library's config dataclasses (or entry-point signatures) through
:func:`default_of`, so the command line, the library and the book's CPU profile cannot drift apart
(``tests/test_defaults.py`` checks the three against each other).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any


def default_of(owner: Any, name: str) -> Any:
    """The default of field ``name`` of a config dataclass, or of parameter ``name`` of a function."""
    if dataclasses.is_dataclass(owner):
        for f in dataclasses.fields(owner):
            if f.name == name:
                if f.default is not dataclasses.MISSING:
                    return f.default
                if f.default_factory is not dataclasses.MISSING:
                    return f.default_factory()
                break
        raise KeyError(f"{owner.__name__} has no default for {name!r}")
    parameter = inspect.signature(owner).parameters[name]
    if parameter.default is inspect.Parameter.empty:
        raise KeyError(f"{owner.__name__} has no default for {name!r}")
    return parameter.default
