"""The book layer: what the chapters need and a user of the tool does not.

Paths and glue (:mod:`~schoolvision.book.notebook`), the results page (:mod:`~schoolvision.book.results`),
the prepared data of chapter 1 (:mod:`~schoolvision.book.data`), the simulated mapper
(:mod:`~schoolvision.book.simulate`, :mod:`~schoolvision.book.simulate_sample`), the galleries' chip pickers
(:mod:`~schoolvision.book.samples`), the sentences that read a clustering (:mod:`~schoolvision.book.verdicts`),
chapter 2's small-data notice (:mod:`~schoolvision.book.small_data`), chapter 6's held-out area and mask
study (:mod:`~schoolvision.book.heldout`, :mod:`~schoolvision.book.prefilter`) and chapter 8's round on the
user's own data (:mod:`~schoolvision.book.own`). It sits above every product
package, and none imports it (an import-linter contract in ``pyproject.toml``).
"""
