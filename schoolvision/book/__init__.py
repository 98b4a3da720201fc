"""The book layer: what the chapters need and a user of the tool does not.

Paths and glue (:mod:`~schoolvision.book.notebook`), the results page (:mod:`~schoolvision.book.results`),
the prepared data of chapter 1 (:mod:`~schoolvision.book.data`), the simulated mapper
(:mod:`~schoolvision.book.simulate`, :mod:`~schoolvision.book.simulate_sample`), the galleries' chip pickers
(:mod:`~schoolvision.book.samples`), the sentences that read a clustering (:mod:`~schoolvision.book.verdicts`)
and chapter 8's round on the user's own data (:mod:`~schoolvision.book.own`). It sits above every product
package, and none imports it (an import-linter contract in ``pyproject.toml``).
"""
