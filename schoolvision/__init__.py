"""schoolvision: find schools in high-resolution overhead imagery.

The library carries all the logic; the book in ``book/`` only calls it.
"""

__version__ = "0.1.0"

CLASSES: tuple[str, str] = ("not_school", "school")
"""Class names in index order. Alphabetical, so ImageFolder trees map the same way."""

SCHOOL: int = 1
"""Index of the positive class."""
