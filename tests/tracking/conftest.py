"""The tracking service's tests run it against moto's SQS and a database that does not
answer: the pixel and the redirect must never need PostgreSQL."""

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from datamailer_core.settings import Settings
from datamailer_server import ops
from datamailer_tracking.main import create_app
from tests.conftest import _started, run_sync, settings_for

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


# The recipient pages (unsubscribe, verification) read and write the database: the app
# over the rolled-back test session.
@pytest.fixture
async def tracking_app(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[FastAPI]:
    async for app in _started(create_app(settings), sessionmaker):
        yield app


@pytest.fixture
async def pages(tracking_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=tracking_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tracking.test") as client:
        yield client
