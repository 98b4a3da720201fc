# The two commands of the project:
#   make book   execute every chapter (papermill, profile by device) and build the HTML in _build/html
#   make test   library tests + notebook regression tests (nbval) over every chapter
# Both create .venv when it is missing and install the project into it.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= auto
PIP_FLAGS ?= --quiet --disable-pip-version-check
NBVAL_FLAGS ?= --nbval-lax --nbval-sanitize-with book/nbval_sanitize.cfg --nbval-cell-timeout=1800

.PHONY: help install notebooks execute html book test test-lib test-notebooks check clean

help:
	@echo "make book   build the book: run every chapter (PROFILE=auto|cpu|gpu|path/to/yours.yaml), render _build/html"
	@echo "make test   pytest (library) and pytest --nbval-lax over every chapter"
	@echo "make clean  remove _build, data, runs and outputs (keeps .venv)"

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the dependencies change.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install $(PIP_FLAGS) -e '.[book,test,lint,onnx,ray]'
	touch $@

install: $(VENV)/.installed

# .ipynb from the jupytext sources (only where the code changed; executed outputs are kept otherwise).
notebooks: install
	$(PY) -m build_tools.book sync

execute: notebooks
	$(PY) -m build_tools.book execute --profile $(PROFILE) --timings _build/execution.json

# The executed check (no stderr, no stray output) guards the published demo book; a book run on your own
# profile may rightly show warnings about your data, so it only checks that the pairs are in sync.
html: install
	$(PY) -m build_tools.book check $(if $(filter auto cpu gpu,$(PROFILE)),--executed,)
	$(VENV)/bin/jupyter-book build . --warningiserror --keep-going --quiet
	@echo "book: $(CURDIR)/_build/html/index.html ($$(du -sh _build/html | cut -f1))"

book: execute
	$(MAKE) --no-print-directory html

test-lib: install
	$(PY) -m pytest -q -m "slow or not slow"

test-notebooks: install
	TQDM_DISABLE=1 $(PY) -m pytest -q $(NBVAL_FLAGS) $$($(PY) -m build_tools.book list)

test: test-lib test-notebooks

check: install
	$(PY) -m build_tools.book check --executed

clean:
	rm -rf _build data runs outputs .pytest_cache
