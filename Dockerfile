# One image for every Datamailer process; the command picks the role
# (datamailer api | tracking | worker all | scheduler | migrate | queues create).
# Two stages: uv builds the locked environment, the runtime stage gets only that
# environment plus the migrations, runs as an unprivileged user and has no uv.
ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS build
# The uv that resolved uv.lock (make installs the same into .tools/).
RUN pip install --no-cache-dir "uv==0.13.9"
ENV UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# Third-party dependencies first, from the lock and the members' metadata only, so a
# source change does not reinstall them.
COPY pyproject.toml uv.lock README.md ./
COPY libs/core/pyproject.toml libs/core/
COPY libs/web/pyproject.toml libs/web/
COPY services/api/pyproject.toml services/api/
COPY services/tracking/pyproject.toml services/tracking/
COPY services/workers/pyproject.toml services/workers/
RUN uv sync --frozen --no-dev --all-packages --no-install-workspace
# Then the workspace packages, installed (not linked to the sources) into the environment.
COPY libs libs
COPY services services
COPY src src
RUN uv sync --frozen --no-dev --all-packages --no-editable

FROM ${PYTHON_IMAGE}
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN useradd --system --uid 10001 --no-create-home --home-dir /app datamailer
WORKDIR /app
# The environment's interpreter links to this image's /usr/local/bin/python3.12: both
# stages start from the same PYTHON_IMAGE.
COPY --from=build /app/.venv /app/.venv
# `datamailer migrate` reads alembic.ini and migrations/ from the working directory.
COPY alembic.ini ./
COPY migrations migrations
USER 10001
EXPOSE 8000 8001
CMD ["datamailer", "api", "--host", "0.0.0.0"]
