# Set-up and run:  make run      Tests:  make test
VENV    ?= .venv
CONFIG  ?= config/linnix.toml
PYTEST_ARGS ?=

.PHONY: install install-dev run test lint typecheck bench clean

install:
	scripts/install.sh

install-dev:
	scripts/install.sh --dev

run: install
	$(VENV)/bin/otel-linnix run --config $(CONFIG)

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install-dev
	$(VENV)/bin/mypy

test: install-dev lint typecheck
	$(VENV)/bin/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
