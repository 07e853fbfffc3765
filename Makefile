# The README's words. Needs only python3 (3.11+) and pip: uv is installed into .tools/.
PYTHON ?= python3
UV := $(CURDIR)/.tools/bin/uv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/.venv
RUN := $(UV) run --frozen --no-sync

.PHONY: up test lint typecheck pytest test-slow bench fuzz lambda-zip install clean validate-infra

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

# The Lambda deployment zip (Python 3.12 arm64); LAMBDA_ZIP_FLAGS=--local builds it for
# this interpreter instead.
lambda-zip: install
	$(RUN) python -m datamailer_server.lambda_zip --uv $(UV) --output dist/datamailer-lambda.zip $(LAMBDA_ZIP_FLAGS)

clean:
	rm -rf dist .tools .venv .mypy_cache .pytest_cache .ruff_cache
