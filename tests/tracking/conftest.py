"""The tracking service's tests run it against moto's SQS and a database that does not
answer: the pixel and the redirect must never need PostgreSQL."""

import pytest

from datamailer_cli import ops
from datamailer_core.settings import Settings
from tests.conftest import run_sync, settings_for

UNREACHABLE_DATABASE = "postgresql+asyncpg://nobody@127.0.0.1:9/none"


@pytest.fixture
def tracking_settings(aws_endpoint: str) -> Settings:
    base = settings_for(UNREACHABLE_DATABASE, aws_endpoint)
    urls = run_sync(ops.create_queues(base))
    return settings_for(
        UNREACHABLE_DATABASE,
        aws_endpoint,
        PUBLIC_BASE_URL="https://mail.example.com",
        **{ops.QUEUE_ENV[q]: u for q, u in urls.items()},
    )
