# From a fresh clone: `make test` builds .venv, installs everything and runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint bench-read demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[all,dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check chunkrec services models storage tests bench

bench-read: $(STAMP)
	$(BIN)/python bench/read_speed.py

# the whole system on this machine: broker, Redis, three trainers, serving, router, joiner;
# a MovieLens warm-up, then an A/B experiment driven by simulated users, ending in its verdict
demo: $(STAMP)
	$(BIN)/chunkrec up

clean:
	rm -rf $(VENV)
