"""Recipient-list benchmark: one bulk-upsert of N members (default 100,000, all new
contacts) through the real HTTP endpoint of an API process served by uvicorn, then the
same body again (every member unchanged) and a reconcile with `remove_absent` that keeps
half. Prints members per second and the API process's peak resident memory.

The bench server runs without autovacuum; planning against the statistics of empty tables
the contacts engine's state read degrades to nested loops as they fill (26,000 members took
four minutes). So a thread stands in for autovacuum and ANALYZEs every few seconds during
the first pass, and VACUUM ANALYZE runs before the repeat and the reconcile.

    python -m bench.recipient_lists [--members 100000]
"""

import argparse
import asyncio
import json
import threading
import time
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.common import bench_env, fresh_database, peak_rss_mb, prepare_tenant, report, service

LIST_KEY = "course:2026:cohort-a"


def generate(members: int) -> list[dict[str, Any]]:
    return [
        {
            "source_object_key": f"registration:{i}",
            "email": f"user{i}@example.com",
            "metadata": {"user_id": i},
        }
        for i in range(members)
    ]


async def _analyze(url: str, statement: str = "VACUUM ANALYZE") -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text(statement))
    await engine.dispose()


def _autoanalyze(url: str, stop: threading.Event) -> None:
    while not stop.wait(5):
        asyncio.run(_analyze(url, "ANALYZE contacts, subscriptions, recipient_list_members"))


def _post(base: str, key: str, action: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    payload = json.dumps({"audience": "news", "client": "app", **body}).encode()
    start = time.perf_counter()
    response = httpx.post(
        f"{base}/api/recipient-lists/{LIST_KEY}/members/{action}",
        content=payload,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=600,
    )
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    return elapsed, dict(response.json())


def run(members: int) -> dict[str, Any]:
    items = generate(members)
    body_mb = len(json.dumps({"members": items}).encode()) / 2**20
    with fresh_database() as url:
        env = bench_env(url)
        key = prepare_tenant(env)
        with service("api", env) as (base, proc):
            at_rest = peak_rss_mb(proc.pid)
            stop = threading.Event()
            analyzer = threading.Thread(target=_autoanalyze, args=(url, stop), daemon=True)
            analyzer.start()
            try:
                first_s, first = _post(base, key, "bulk-upsert", {"members": items})
            finally:
                stop.set()
                analyzer.join()
            asyncio.run(_analyze(url))
            repeat_s, repeat = _post(base, key, "bulk-upsert", {"members": items})
            half = items[: members // 2]
            reconcile_s, reconciled = _post(base, key, "reconcile", {"members": half, "remove_absent": True})
            peak = peak_rss_mb(proc.pid)
            ancestor = httpx.get(
                f"{base}/api/recipient-lists/course",
                params={"audience": "news", "client": "app"},
                headers={"Authorization": f"Bearer {key}"},
            ).json()
    assert first["counts"]["created"] == members, first["counts"]
    assert repeat["counts"]["unchanged"] == members, repeat["counts"]
    assert reconciled["counts"]["removed"] == members - len(half), reconciled["counts"]
    figures = {"members": members, "body_mb": body_mb, "bulk_upsert_seconds": first_s,
               "bulk_upsert_rows_per_second": members / first_s, "repeat_seconds": repeat_s,
               "repeat_rows_per_second": members / repeat_s, "reconcile_seconds": reconcile_s,
               "reconcile_rows_per_second": len(half) / reconcile_s, "api_rss_at_rest_mb": at_rest,
               "api_peak_rss_mb": peak, "ancestor_member_count": ancestor["member_count"]}  # fmt: skip
    report(
        "recipient_lists",
        [
            ("members", f"{members:,}"),
            ("JSON body", f"{body_mb:.1f} MB"),
            ("bulk-upsert (new)", f"{first_s:.1f} s, {figures['bulk_upsert_rows_per_second']:,.0f} rows/s"),
            ("bulk-upsert (repeat)", f"{repeat_s:.1f} s, {figures['repeat_rows_per_second']:,.0f} rows/s"),
            (
                "reconcile (keep half)",
                f"{reconcile_s:.1f} s, {figures['reconcile_rows_per_second']:,.0f} rows/s",
            ),
            ("API RSS at rest", f"{at_rest:.0f} MB"),
            ("API peak RSS", f"{peak:.0f} MB"),
        ],
        figures,
    )
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=100_000)
    run(parser.parse_args().members)
