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

pytest: venv
	scripts/install-system-deps.sh test
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
