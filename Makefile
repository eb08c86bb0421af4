# Two entry points: `make run` (the demo federation) and `make test` (the suite).
# Both create or reuse .venv, install what is missing, and fetch Fashion-MNIST via apt;
# `make test` also installs the headless browser of the real-device test (chromium) via apt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedal-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
CONFIG ?= experiments/configs/demo.toml

.PHONY: run test lint data browser setup

setup: $(STAMP) data

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev]"
	touch $(STAMP)

data:
	@bash scripts/ensure-data.sh $(FMNIST)

browser:
	@bash scripts/ensure-browser.sh

run: setup
	$(BIN)/fedal run $(CONFIG)

test: setup browser
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
