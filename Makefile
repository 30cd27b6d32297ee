# One-command setup and test. `make setup` makes .venv and installs geoconcept with its
# dev tools (torch 2.14.1 / torchvision 0.29.1 pinned in pyproject.toml).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup test lint bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check geoconcept_cli tests benchmarks

bench: setup
	$(BIN)/python benchmarks/predict_latency.py
