# ichdet: `make demo` and `make test` are all a new machine needs (they install first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test test-fast demo lint format bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

# the quick loop while editing: everything but the tests marked slow
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# the demo's figures depend on library versions: it runs with the versions they were measured with
$(BIN)/.demo-pinned: constraints/demo.txt $(BIN)/.installed
	$(BIN)/python -m pip install -q -c constraints/demo.txt -e .
	touch $@

demo: install $(BIN)/.demo-pinned
	$(BIN)/ichdet demo

bench: install
	$(BIN)/python benchmarks/bench_prepare.py
	$(BIN)/python benchmarks/bench_dataset.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
