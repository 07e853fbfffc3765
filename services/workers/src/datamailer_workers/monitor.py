"""The worker's and the scheduler's small HTTP listener (`--metrics-port`): `GET /metrics`
(Prometheus text) and `GET /health` (200 when the database answers, else 503), like the
web services'. Plain asyncio on the process's own loop: one short request per
connection, nothing on the records' path (handlers only increment counters)."""

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Final

from sqlalchemy import text

from datamailer_core.metrics import CONTENT_TYPE
from datamailer_workers.deps import WorkerDeps

logger = logging.getLogger("datamailer.workers.monitor")

DEFAULT_MONITOR_HOST: Final = "0.0.0.0"  # scraped from outside the container or host
HEALTH_TIMEOUT_SECONDS: Final = 2.0
# A scraper's request is one line and a few headers; anything slower or larger is dropped.
READ_TIMEOUT_SECONDS: Final = 5.0
MAX_HEAD_BYTES: Final = 8192
_JSON: Final = "application/json"


async def database_ok(deps: WorkerDeps) -> bool:
    try:
        async with deps.sessionmaker() as session:
            await asyncio.wait_for(session.execute(text("select 1")), HEALTH_TIMEOUT_SECONDS)
    except Exception:  # any failure to reach the database is the answer, not an error
        return False
    return True


async def _answer(deps: WorkerDeps, method: str, path: str) -> tuple[int, str, bytes]:
    path = path.split("?", 1)[0]
    if path not in ("/metrics", "/health"):
        return 404, _JSON, b'{"status": "not_found"}'
    if method not in ("GET", "HEAD"):
        return 405, _JSON, b'{"status": "method_not_allowed"}'
    if path == "/metrics":
        return 200, CONTENT_TYPE, deps.metrics.render()
    if await database_ok(deps):
        return 200, _JSON, json.dumps({"status": "ok", "database": "ok"}).encode()
    return 503, _JSON, json.dumps({"status": "unavailable", "database": "unreachable"}).encode()


async def _serve(deps: WorkerDeps, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_SECONDS)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) == 3 and parts[2].startswith("HTTP/"):
            status, content_type, body = await _answer(deps, parts[0], parts[1])
            method = parts[0]
        else:
            status, content_type, body, method = 400, _JSON, b'{"status": "bad_request"}', "GET"
        writer.write(
            (
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode("latin-1")
            + (body if method != "HEAD" else b"")
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@asynccontextmanager
async def serve_monitor(deps: WorkerDeps, port: int, host: str = DEFAULT_MONITOR_HOST) -> AsyncIterator[int]:
    """Listen on `host:port` while the context lasts; yields the bound port (useful
    with port 0)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve(deps, reader, writer)

    server = await asyncio.start_server(handle, host, port, limit=MAX_HEAD_BYTES)
    bound = int(server.sockets[0].getsockname()[1])
    logger.info("metrics and health on %s:%d", host, bound)
    try:
        yield bound
    finally:
        server.close()
        await server.wait_closed()
