# Two commands for a newcomer: `make demo` and `make test`. Both build .venv first.
# `make docs` builds the docs site into build/site (strict: a broken link or reference fails).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test lint typecheck pytest docs bench bench-smoke redis-server clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ghl-async demo

test: $(STAMP) redis-server lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check ghl_async tests benchmarks
	$(BIN)/ruff format --check ghl_async tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy --strict ghl_async

# coverage starts before pytest: the fake_highlevel plugin imports ghl_async at start-up.
pytest: $(STAMP)
	$(BIN)/coverage run -m pytest
	$(BIN)/coverage report --fail-under=90

# The Redis limiter's tests start a throwaway redis-server; install Debian's when missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "redis-server not found: installing Debian's redis-server package"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server >/dev/null; \
	}
	@command -v redis-server >/dev/null 2>&1 || { echo "could not install redis-server"; exit 1; }

DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,docs]'
	touch $(DOCS_STAMP)

# mkdocs-material's notice about its successor is not a build problem: keep the log clean.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# The full side-by-side run: writes benchmarks/RESULTS.md and benchmarks/charts/.
bench: $(BENCH_STAMP) redis-server
	$(BIN)/python -m benchmarks

# A one-minute run of every benchmark, small: checks each runs and makes its table.
bench-smoke: $(BENCH_STAMP) redis-server
	$(BIN)/python -m benchmarks --smoke

clean:
	rm -rf $(VENV) .coverage .mypy_cache .ruff_cache build/site
