"""The tracking service under load: open pixels and click redirects per second and their
p99 latency, next to a bare uvicorn endpoint (a raw ASGI app, no framework) answering
the same GIF with the same headers in the same run. Target: the tracking service at
>= 50% of the bare endpoint's rate.

Real processes: `datamailer tracking` (one uvicorn worker, as deployed per core, and
its event publisher child, TRACKING_EVENT_PUBLISHER=process) with its SQS client pointed
at `bench.sqs_sink` (moto would spend more CPU than the service
it measures), the bare endpoint under uvicorn with the same options, and the load
generator: `wrk` (64 connections, one thread) when installed (`apt-get install wrk`),
else an asyncio HTTP/1.1 keep-alive loop in this process with as many connections.
After the run the tracking service is stopped normally and the sink's message count
must cover every request served: nothing dropped, nothing lost at shutdown.

    python -m bench.tracking [--seconds 10] [--connections 64]
"""

import argparse
import asyncio
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.common import bench_env, fresh_database, report, service
from datamailer_core.campaigns.message import click_url
from datamailer_core.security import new_token
from datamailer_server.localpg import free_port
from datamailer_tracking.pixel import NO_STORE, PIXEL

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret"  # bench_env's SECRET_KEY
LINK = "https://shop.example.com/sale?utm_source=newsletter&item=42"
_BARE_HEADERS = [
    (b"content-type", b"image/gif"),
    (b"content-length", str(len(PIXEL)).encode()),
    *((k.lower().encode(), v.encode()) for k, v in NO_STORE.items()),
]


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The reference: the GIF and nothing else (no routing, no middleware, no event)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": _BARE_HEADERS})
    await send({"type": "http.response.body", "body": PIXEL})


def _wait_for(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


@contextmanager
def process(argv: list[str], ready_url: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, cwd=ROOT)
    try:
        _wait_for(ready_url, proc)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bare_server(port: int) -> list[str]:
    # The options `datamailer tracking` gives uvicorn (cli `_serve`).
    code = (
        "import uvicorn; uvicorn.run('bench.tracking:bare_app', host='127.0.0.1', "
        f"port={port}, log_level='warning', access_log=False, proxy_headers=True)"
    )
    return [sys.executable, "-c", code]


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _wrk(url: str, seconds: float, connections: int) -> dict[str, float]:
    out = subprocess.run(
        # A long timeout: a slow answer counts in the latency, not as a socket error.
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "30s", "--latency", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    assert p99, out
    assert rate, out
    assert total, out
    return {
        "requests_per_second": float(rate.group(1)),
        "p99_ms": float(p99.group(1)) * _UNITS[p99.group(2)],
        "requests": int(total.group(1)),
        "bad_status": int(bad.group(1)) if bad else 0,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
    }


async def _asyncio_load(url: str, seconds: float, connections: int) -> dict[str, float]:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    request = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: bench\r\n\r\n".encode()
    latencies: list[float] = []
    bad_status = 0
    deadline = time.perf_counter() + seconds

    async def connection() -> None:
        nonlocal bad_status
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        while (start := time.perf_counter()) < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length:\s*(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            latencies.append(time.perf_counter() - start)
            bad_status += int(head[9:12]) >= 400
        writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed = time.perf_counter() - began
    return {
        "requests_per_second": len(latencies) / elapsed,
        "p99_ms": statistics.quantiles(latencies, n=100)[98] * 1e3,
        "requests": len(latencies),
        "bad_status": bad_status,
        "socket_errors": 0,
    }


def load(url: str, seconds: float, connections: int) -> dict[str, float]:
    if shutil.which("wrk"):
        return _wrk(url, seconds, connections)
    return asyncio.run(_asyncio_load(url, seconds, connections))


def sink_count(sink: str) -> int:
    return int(httpx.get(f"{sink}/count").json()["count"])


def run(seconds: float = 10.0, connections: int = 64) -> dict[str, Any]:
    generator = "wrk" if shutil.which("wrk") else "asyncio"
    warm = min(2.0, seconds)
    sink_port, bare_port = free_port(), free_port()
    sink = f"http://127.0.0.1:{sink_port}"
    token = new_token()
    pixel_path = f"/t/o/{token}.gif"
    click = click_url("http://x", SECRET, token, LINK)
    click_path = click[len("http://x") :]
    figures: dict[str, Any] = {"generator": generator, "connections": connections, "seconds": seconds}

    sink_argv = [sys.executable, "-m", "bench.sqs_sink", "--port", str(sink_port)]
    with fresh_database() as url, process(sink_argv, f"{sink}/count"):
        bare = f"http://127.0.0.1:{bare_port}"
        with process(bare_server(bare_port), f"{bare}{pixel_path}"):
            load(f"{bare}{pixel_path}", warm, connections)
            figures["bare"] = load(f"{bare}{pixel_path}", seconds, connections)

        env = bench_env(url, SQS_EMAIL_EVENTS_QUEUE_URL=f"{sink}/123456789012/email-events")
        env["AWS_ENDPOINT_URL"] = sink
        with service("tracking", env) as (base, _proc):
            check = httpx.get(f"{base}{click_path}")
            assert check.status_code == 302, check.text
            assert check.headers["location"] == LINK
            warmup = load(f"{base}{pixel_path}", warm, connections)
            figures["pixel"] = load(f"{base}{pixel_path}", seconds, connections)
            figures["click"] = load(f"{base}{click_path}", seconds, connections)
        # The service stopped normally: what it still held was published on the way out.
        served = 1 + warmup["requests"] + figures["pixel"]["requests"] + figures["click"]["requests"]
        figures["events_expected_at_least"] = served
        figures["events_published"] = sink_count(sink)

    bare_rate = figures["bare"]["requests_per_second"]
    for kind in ("pixel", "click"):
        figures[f"{kind}_vs_bare"] = round(figures[kind]["requests_per_second"] / bare_rate, 3)

    def row(name: str, result: dict[str, float]) -> tuple[str, str]:
        value = f"{result['requests_per_second']:>9,.0f} req/s   p99 {result['p99_ms']:6.2f} ms"
        errors = result["bad_status"] + result["socket_errors"]
        return name, value + (f"   errors {errors:,}" if errors else "")

    report(
        "tracking",
        [
            ("load generator", f"{generator}, {connections} connections, {seconds:g} s per run"),
            row("bare uvicorn GIF", figures["bare"]),
            row("pixel  GET /t/o/{token}.gif", figures["pixel"]),
            row("click  GET /t/c/{token}", figures["click"]),
            ("pixel / bare", f"{figures['pixel_vs_bare']:.0%} (target >= 50%)"),
            ("click / bare", f"{figures['click_vs_bare']:.0%} (target >= 50%)"),
            (
                "events published",
                f"{figures['events_published']:,} for {served:,} requests counted by the generator",
            ),
        ],
        figures,
    )
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    arguments = parser.parse_args()
    run(arguments.seconds, arguments.connections)
