"""A hostile template against a real API process (uvicorn on a free port): while it
renders, the same process keeps answering `/health` quickly, and the hostile request
ends as a 400 field error within seconds."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from datamailer_server.localpg import free_port
from tests.api.transactional_factories import SEND, TEMPLATES, send_body, template_body
from tests.factories import Tenant, TenantFactory

SECRET_KEY = "test-secret-key"
# Repr of a hundred million list items: one C call holding the interpreter for seconds
# (and ~700 MB) where the sandbox measured only the outer list.
NESTED = "{{ [[1] * 10000] * 10000 }}"
# Pure template work that runs into the render's deadline or loop limit.
BURNER = (
    "{% for a in range(3) %}{% for i in range(99000) %}"
    "{% if ('ab' ~ i)|upper|lower == 'x' %}{% endif %}{% endfor %}{% endfor %}"
)


@pytest.fixture
async def server(
    make_database: Callable[[], str], aws_endpoint: str, tmp_path: Path
) -> AsyncIterator[tuple[str, Tenant]]:
    database_url = make_database()
    engine = create_async_engine(database_url)
    try:
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            tenant = await TenantFactory(session, SECRET_KEY).create()
    finally:
        await engine.dispose()
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "AWS_", "DATAMAILER_"))},
        "DATAMAILER_ENV": "test",
        "DATABASE_URL": database_url,
        "AWS_ENDPOINT_URL": aws_endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "SECRET_KEY": SECRET_KEY,
        "LOG_LEVEL": "WARNING",
    }
    argv = [sys.executable, "-m", "uvicorn", "--factory", "datamailer_api.main:create_app"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path)  # cwd: no developer .env
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=base) as client:
            while True:
                assert proc.poll() is None, "the API exited"
                assert time.monotonic() < deadline, "the API did not start"
                try:
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        yield base, tenant
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_health_answers_while_hostile_templates_render(server: tuple[str, Tenant]) -> None:
    base, tenant = server
    async with httpx.AsyncClient(base_url=base, headers=tenant.headers, timeout=60) as client:
        for key, html_body in (("nested", NESTED), ("burner", BURNER)):
            response = await client.put(
                f"{TEMPLATES}/{key}", json=template_body(html_body=html_body, required_context=[])
            )
            assert response.status_code in (200, 201), response.text
        # Warm up: both render workers started, then a few database connections open. (Asked
        # at once, a health check can wait for a connection the first renders' requests hold
        # while the workers start, and answer 503: a warm-up artefact, not what is tested.)
        sends = await asyncio.gather(
            *(client.post(SEND, json=send_body(template_key="nested", context={})) for _ in range(2))
        )
        checks = await asyncio.gather(*(client.get("/health") for _ in range(4)))
        assert [r.status_code for r in (*sends, *checks)] == [400, 400, 200, 200, 200, 200]

        async def hostile(key: str) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            response = await client.post(SEND, json=send_body(template_key=key, context={}, dry_run=True))
            return response, time.monotonic() - started

        requests = [asyncio.create_task(hostile(key)) for key in ("burner", "nested")]
        await asyncio.sleep(0.1)  # both renders are under way
        health_times: list[float] = []
        while not all(task.done() for task in requests):
            started = time.monotonic()
            health = await client.get("/health")
            health_times.append(time.monotonic() - started)
            assert health.status_code == 200, health.text
            await asyncio.sleep(0.05)
        (burner, burner_time), (nested, nested_time) = [task.result() for task in requests]

    assert len(health_times) >= 3, "the renders ended before /health could be asked"
    # Within 100 ms, but for one straggler: on a loaded two-core machine a lone request
    # can miss that without any render running. A blocked loop misses it by seconds.
    assert sorted(health_times)[-2] < 0.1, health_times
    assert max(health_times) < 0.5, health_times
    assert burner.status_code == 400, burner.text
    assert burner.json()["error"]["fields"] == {"html_body": "render_limit_exceeded"}
    assert nested.status_code == 400, nested.text
    assert nested.json()["error"]["fields"] == {"html_body": "output_too_large"}
    assert burner_time < 5, burner_time
    assert nested_time < 5, nested_time
