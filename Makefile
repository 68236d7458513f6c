# certd: `make demo` runs the article's load balancer (HAProxy + two nginx, Pebble or the local CA) under certd;
# `make test` installs what the tests need (Debian packages, Python packages) and runs them.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: venv demo test lint typecheck pytest clean

$(BIN)/certd: pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || scripts/install-system-deps.sh python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

venv: $(BIN)/certd

demo: venv
	scripts/install-system-deps.sh demo
	scripts/demo.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy --strict certd

# Two pytest-xdist workers, each with its own servers; tests that need 127.0.0.1:80 share one worker (loadgroup).
# PYTEST_XDIST="-n 0" runs everything in one process (for -x, pdb, or a single test).
PYTEST_XDIST ?= -n 2 --dist loadgroup
# `make test` leaves out the real-time acceptance runs marked slow (minutes each: the fault matrix, HAProxy down
# for five minutes, a CA hung until 20 s before expiry...); CI runs them as well: `make pytest PYTEST_MARKS=`.
PYTEST_MARKS ?= not slow

pytest: venv
	scripts/install-system-deps.sh test
	rc=0; $(BIN)/pytest $(PYTEST_XDIST) -m "$(PYTEST_MARKS)" $(PYTEST_ARGS) || rc=$$?; \
	  [ $$rc -eq 0 ] || echo "pytest exited $$rc (1 tests failed, 2 interrupted, 3 internal error, 4 usage, 5 no tests)" >&2; \
	  exit $$rc

test: lint typecheck pytest

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
