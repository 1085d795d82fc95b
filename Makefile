# Every target sets itself up: .venv is (re)created when missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench lint format clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

test: lint
	$(BIN)/python -m pytest -n 2 -q tests

demo: $(STAMP)
	$(BIN)/rankedlist train --config configs/glyphs.yaml --overwrite

bench: $(STAMP)
	$(BIN)/python benchmarks/loss_speed.py
	$(BIN)/python benchmarks/eval_speed.py --repeat 2

clean:
	rm -rf $(VENV) runs .pytest_cache
