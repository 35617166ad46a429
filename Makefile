# Two commands for a newcomer: `make demo` and `make test`. Both build .venv first.
# `make docs` builds the docs site into build/site (strict: a broken link or reference fails).
#
# The development environment is locked: requirements/dev.lock pins every package of every
# extra (dev, docs, bench, redis, arq, cli) and the build tools, with hashes, so a fresh
# clone tests against exactly what CI tested. It is uv's universal lock (`uv pip compile
# --universal`): one file for every Python we support, with markers where a package's
# release differs by Python version, which pip-tools cannot do without one file per
# version. Installing it needs only pip (`--require-hashes`), so a fresh machine needs no
# uv to run the suite. `make lock` regenerates it at the newest releases. The library's
# own ranges in pyproject.toml stay open: users get the newest releases, and CI also runs
# the suite against the newest and the lowest releases pyproject allows (.ci/drift).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-lock
LOCK   := requirements/dev.lock

.PHONY: demo test lint typecheck pytest docs bench bench-smoke redis-server postgres-server \
  lock clean

$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes \
	  --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
	  --no-build-isolation -e .
	touch $(STAMP)

# Every extra at its newest release that pyproject allows, for every Python from 3.10 on.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml requirements/tools.in --all-extras --universal \
	  --python-version 3.10 --generate-hashes --no-header --upgrade --quiet -o $(LOCK)

demo: $(STAMP)
	$(BIN)/ghl-async demo

test: $(STAMP) redis-server postgres-server lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check ghl_async tests benchmarks
	$(BIN)/ruff format --check ghl_async tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy --strict ghl_async tests benchmarks

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

# The PostgreSQL sink's tests run initdb and postgres in a temp dir (as the postgres user
# when root): install Debian's postgresql package when they are missing. Debian keeps the
# binaries off PATH, in /usr/lib/postgresql/NN/bin, where tests/support/postgres_server.py
# looks too.
PG_FOUND = { command -v initdb && command -v pg_ctl; } >/dev/null 2>&1 || \
  ls /usr/lib/postgresql/*/bin/initdb /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1
postgres-server:
	@$(PG_FOUND) || { \
	  echo "initdb/pg_ctl not found: installing Debian's postgresql package"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq postgresql >/dev/null; \
	}
	@$(PG_FOUND) || { echo "could not install postgresql"; exit 1; }

# mkdocs-material's notice about its successor is not a build problem: keep the log clean.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

# The full side-by-side run: writes benchmarks/RESULTS.md and benchmarks/charts/.
bench: $(STAMP) redis-server
	$(BIN)/python -m benchmarks

# A one-minute run of every benchmark, small: checks each runs and makes its table.
bench-smoke: $(STAMP) redis-server
	$(BIN)/python -m benchmarks --smoke

clean:
	rm -rf $(VENV) .coverage .mypy_cache .ruff_cache build/site
