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
# a MovieLens warm-up, then an A/B experiment driven by simulated users, ending in its verdict.
# On the MovieLens-1M sample beside the checkout (3,012 users, ~1,000 an arm) when it is
# there, with the CTR margin its users can decide (README: "The demo's answer"); else on
# MovieLens-100k (fetched), 6,000 sessions.
ML1M := ../shared/data/movielens-1m-users3000plus
DEMO_ARGS ?= $(if $(wildcard $(ML1M)/users.dat),--data movielens:$(ML1M) --margin 0.15 --minutes 12,--sessions 6000)
demo: $(STAMP)
	$(BIN)/chunkrec up $(DEMO_ARGS)

clean:
	rm -rf $(VENV)
