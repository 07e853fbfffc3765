# The README's words. Needs only python3 (3.11+) and pip: uv is installed into .tools/.
PYTHON ?= python3
UV := $(CURDIR)/.tools/bin/uv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/.venv
RUN := $(UV) run --frozen --no-sync

.PHONY: up test lint typecheck pytest test-slow bench fuzz install clean validate-infra

$(UV):
	$(PYTHON) -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/pip install --quiet --disable-pip-version-check "uv>=0.5"

install: $(UV)
	$(UV) sync --frozen --all-packages --quiet

up: install
	$(RUN) datamailer up

test: install lint typecheck pytest

lint:
	$(RUN) ruff check .
	$(RUN) ruff format --check .

typecheck:
	$(RUN) mypy

pytest:
	$(RUN) pytest

validate-infra: install
	$(RUN) datamailer infra validate
	$(RUN) cfn-lint infra/cloudformation/datamailer.yaml

test-slow: install
	$(RUN) pytest -m slow

bench: install
	$(RUN) pytest -m slow -s bench

fuzz: install
	$(RUN) pytest -m slow -s fuzz

clean:
	rm -rf .tools .venv .mypy_cache .pytest_cache .ruff_cache
