# One image for every Datamailer process; the command picks the role
# (datamailer api | tracking | worker all | scheduler | migrate).
FROM python:3.12-slim
ENV UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/app/.venv PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1
RUN pip install --no-cache-dir "uv>=0.5"
WORKDIR /app
COPY pyproject.toml uv.lock alembic.ini ./
COPY libs libs
COPY services services
COPY src src
COPY migrations migrations
RUN uv sync --frozen --no-dev --all-packages
RUN useradd --system --uid 10001 datamailer
USER datamailer
EXPOSE 8000 8001
CMD ["datamailer", "api", "--host", "0.0.0.0"]
