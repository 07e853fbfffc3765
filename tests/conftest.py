"""Test infrastructure: real PostgreSQL and moto's server, never SQLite or decorators.

PostgreSQL comes from DATABASE_URL when given, else the server on 127.0.0.1:5432 when it
answers, else an ephemeral cluster started here. One database per test session (per xdist
worker) is migrated once from a template; each test runs inside a connection-level
transaction that is rolled back, with sessions joining it through savepoints, so code
that commits still leaves nothing behind.
"""

import asyncio
import logging
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from moto.server import ThreadedMotoServer
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from datamailer_api.main import create_app as create_api_app
from datamailer_core.settings import Settings
from datamailer_server import ops
from datamailer_server.localpg import LocalPostgres, free_port
from tests.factories import TenantFactory
from tests.ses_bulk import BulkEndpoint, bulk_proxy

T = TypeVar("T")
pytest_plugins: list[str] = []


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on its own loop in a worker thread (session setup
    runs outside pytest-asyncio's loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _reachable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """`postgresql+asyncpg://user@host:port` of a server the tests may create databases on."""
    if url := os.environ.get("DATABASE_URL"):
        parsed = make_url(url).set(drivername="postgresql+asyncpg", database="")
        yield parsed.render_as_string(hide_password=False).rstrip("/")
        return
    if _reachable("127.0.0.1", 5432):
        yield "postgresql+asyncpg://postgres@127.0.0.1:5432"
        return
    workdir = tempfile.mkdtemp(prefix="dm-test-pg-", dir="/tmp")
    os.chmod(workdir, 0o755)
    cluster = LocalPostgres(data_dir=Path(workdir) / "data", port=free_port())
    cluster.ensure_initialized()
    cluster.start()
    try:
        yield cluster.url("").rstrip("/")
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def admin_sql(server_url: str, *statements: str) -> None:
    engine = create_async_engine(f"{server_url}/postgres", isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def template_database(postgres_server_url: str) -> Iterator[str]:
    """A database migrated once; fresh test databases are copies of it."""
    name = f"dm_tpl_{os.getpid()}_{secrets.token_hex(3)}"
    run_sync(admin_sql(postgres_server_url, f'CREATE DATABASE "{name}"'))
    ops.migrate(settings_for(f"{postgres_server_url}/{name}"))
    yield name
    run_sync(admin_sql(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def make_database(postgres_server_url: str, template_database: str) -> Iterator[Callable[[], str]]:
    """Factory of fresh migrated databases, for tests that need real commits across
    connections (claims, SKIP LOCKED, pollers, servers in subprocesses)."""
    created: list[str] = []

    def make() -> str:
        name = f"dm_test_{os.getpid()}_{secrets.token_hex(4)}"
        run_sync(admin_sql(postgres_server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"'))
        created.append(name)
        return f"{postgres_server_url}/{name}"

    yield make
    run_sync(
        admin_sql(postgres_server_url, *(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in created))
    )


@pytest.fixture(scope="session")
def database_url(make_database: Callable[[], str]) -> str:
    return make_database()


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()


@pytest.fixture
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with engine.connect() as conn:
        transaction = await conn.begin()
        try:
            yield conn
        finally:
            await transaction.rollback()


@pytest.fixture
def sessionmaker(connection: AsyncConnection) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(
        bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False, autoflush=False
    )


@pytest.fixture
async def session(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with sessionmaker() as session:
        yield session


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per moto request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def bulk_server(moto_endpoint: str) -> Iterator[tuple[str, BulkEndpoint]]:
    """The SES v2 `SendBulkEmail` endpoint (tests/ses_bulk.py) in front of moto."""
    with bulk_proxy(moto_endpoint) as served:
        yield served


@pytest.fixture
def aws_endpoint(moto_endpoint: str, bulk_server: tuple[str, BulkEndpoint]) -> str:
    """moto's server behind the `SendBulkEmail` endpoint, both emptied before the test."""
    httpx.post(f"{moto_endpoint}/moto-api/reset").raise_for_status()
    url, endpoint = bulk_server
    endpoint.reset()
    return url


@pytest.fixture
def ses_bulk(aws_endpoint: str, bulk_server: tuple[str, BulkEndpoint]) -> BulkEndpoint:
    """What `SendBulkEmail` rendered, and the statuses it is told to answer."""
    return bulk_server[1]


def settings_for(database_url: str, aws_endpoint: str | None = None, **env: str) -> Settings:
    """Settings from explicit values only: a developer's .env or shell never leaks in."""
    values = {
        "DATAMAILER_ENV": "test",
        "DATABASE_URL": database_url,
        "AWS_ENDPOINT_URL": aws_endpoint or "http://127.0.0.1:9",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "SECRET_KEY": "test-secret-key",
        "LOG_FORMAT": "console",
        "LOG_LEVEL": "WARNING",
        # A publisher child per test app would cost seconds each; the process mode has
        # its own tests (tests/tracking/test_event_process.py).
        "TRACKING_EVENT_PUBLISHER": "inline",
        **env,
    }
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        return Settings(_env_file=None)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def settings(database_url: str, aws_endpoint: str) -> Settings:
    """Settings for the test database and a freshly reset moto with the four queues."""
    base = settings_for(database_url, aws_endpoint)
    urls = run_sync(ops.create_queues(base))
    return settings_for(database_url, aws_endpoint, **{ops.QUEUE_ENV[q]: u for q, u in urls.items()})


async def _started(app: FastAPI, sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[FastAPI]:
    async with LifespanManager(app):
        app.state.sessionmaker = sessionmaker
        yield app


@pytest.fixture
async def api_app(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[FastAPI]:
    async for app in _started(create_api_app(settings), sessionmaker):
        yield app


@pytest.fixture
async def api(api_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=api_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        yield client


@pytest.fixture
def tenants(session: AsyncSession, settings: Settings) -> TenantFactory:
    return TenantFactory(session, settings.security.secret_key.get_secret_value())
