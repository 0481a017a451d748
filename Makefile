# jobherald: `make demo` to see it work, `make test` to check it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint check-format format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/jobherald demo

lint: $(VENV)/.installed-test
	$(BIN)/ruff check daemon migrations tests
	$(BIN)/ruff format --check daemon migrations tests
	$(BIN)/mypy

format: $(VENV)/.installed-test
	$(BIN)/ruff format daemon migrations tests
	$(BIN)/ruff check --fix daemon migrations tests

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache .pytest_cache daemon/*.egg-info
