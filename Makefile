# Every target sets itself up: .venv is (re)created when missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-fast demo bench lint format clean check-install

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	@! grep -rnE "shared/|protocols\.md|rll-spec" src README.md docs \
		|| { echo "user-facing text cites internal files (above)"; exit 1; }

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# The wheel a user installs, used from outside the repository (scripts/check_install.sh).
check-install: $(STAMP)
	scripts/check_install.sh $(BIN)/python

test: lint check-install
	$(BIN)/python -m pytest -n 2 -q tests

# The edit-test loop: lint and the unit tests (under 2 minutes on 2 cores). The tests marked
# slow (end-to-end runs, several processes, injected faults, tune end to end) run in `make test`.
test-fast: lint
	$(BIN)/python -m pytest -n 2 -q -m "not slow" tests

demo: $(STAMP)
	$(BIN)/rankedlist train --config glyphs --overwrite

bench: $(STAMP)
	$(BIN)/python benchmarks/loss_speed.py
	$(BIN)/python benchmarks/eval_speed.py --repeat 2

clean:
	rm -rf $(VENV) runs .pytest_cache
