"""Shared set-up for benchmarks: a fresh migrated database, a tenant with an API key, and
services started as real processes."""

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from datamailer_core.settings import Settings
from datamailer_server import ops
from datamailer_server.localpg import free_port

RESULTS = Path(__file__).parent / "results"


def server_url() -> str:
    url = os.environ.get("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    return (
        make_url(url)
        .set(drivername="postgresql+asyncpg", database="")
        .render_as_string(hide_password=False)
        .rstrip("/")
    )


async def _admin(statement: str) -> None:
    engine = create_async_engine(f"{server_url()}/postgres", isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text(statement))
    await engine.dispose()


@contextmanager
def fresh_database() -> Iterator[str]:
    name = f"dm_bench_{secrets.token_hex(4)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    url = f"{server_url()}/{name}"
    try:
        yield url
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def bench_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "SQS_"))}
    env.update(DATABASE_URL=database_url, DATAMAILER_ENV="test", SECRET_KEY="bench-secret", LOG_LEVEL="WARNING",
               AWS_ENDPOINT_URL=env.get("AWS_ENDPOINT_URL", "http://127.0.0.1:9"), AWS_ACCESS_KEY_ID="test",
               AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1", **extra)  # fmt: skip
    return env


def prepare_tenant(env: dict[str, str]) -> str:
    """Migrate and provision `bench`/`news`/`app`; returns a raw API key."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        settings = Settings(_env_file=None)
        ops.migrate(settings)
        asyncio.run(ops.provision(settings, "bench", "news", "app"))
        return asyncio.run(ops.create_key(settings, "app", f"bench-{secrets.token_hex(3)}")).raw
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def service(command: str, env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    argv = [sys.executable, "-m", "datamailer_server.main", command, "--port", str(port)]
    proc = subprocess.Popen(argv, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    try:
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def report(name: str, rows: list[tuple[str, str]], data: Mapping[str, object]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{name}")  # noqa: T201
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")  # noqa: T201
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))
