from collections.abc import AsyncIterator

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from datamailer_api.main import create_app as create_api
from datamailer_server.localpg import free_port
from datamailer_tracking.main import create_app as create_tracking
from tests.conftest import settings_for


async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            yield c


async def test_health_is_200_when_the_database_answers(database_url: str) -> None:
    for factory in (create_api, create_tracking):
        async for client in _client(factory(settings_for(database_url))):
            response = await client.get("/health")
            assert response.status_code == 200
            assert response.json()["status"] == "ok"


async def test_health_is_503_when_the_database_is_down() -> None:
    dead = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing"
    for factory in (create_api, create_tracking):
        async for client in _client(factory(settings_for(dead))):
            response = await client.get("/health")
            assert response.status_code == 503
            assert response.json()["status"] == "unavailable"


async def test_metrics_expose_request_latency(database_url: str) -> None:
    async for client in _client(create_api(settings_for(database_url))):
        await client.get("/health")
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        counts = [
            line
            for line in response.text.splitlines()
            if line.startswith("datamailer_http_request_duration_seconds_count")
        ]
        assert any('route="/health"' in line and 'status="200"' in line for line in counts)
