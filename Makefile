# Two commands on a fresh machine with Python 3.11 and pip:
#   make run    set up, train on the shipped kindergarten set, print answers, plot curves
#   make test   set up, ruff, mypy, the test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned: an unpinned torch can pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: run test setup bench clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test]" $(TORCH)
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/python -m pyg_grapheme fit --config experiments/kindergarten.yaml

test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy pyg_grapheme
	$(BIN)/python -m pytest -q -n 2

clean:
	rm -rf $(VENV) runs lightning_logs .pytest_cache .mypy_cache
