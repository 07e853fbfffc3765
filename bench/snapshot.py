"""Snapshot benchmark: a campaign over N contacts (default 1,000,000) with tags and a
realistic share of bounced, complained, unsubscribed, invalid and unverified ones,
snapshotted by the real chunked `run_snapshot` (include `customers`, exclude `churned`,
category `newsletter`). The reference, measured in the same run on the same data, is one
bare `INSERT ... SELECT` with the same join and tag filters: no skip reasons, no chunks,
no ON CONFLICT, no counters. Target: the snapshot within 1.5x of the bare statement.

Each is timed into an empty `campaign_recipients` after VACUUM ANALYZE and CHECKPOINT, in
alternating order over `--rounds` (bare, real | real, bare | ...); the best time of each
is compared, so a burst of other load on the machine does not decide the ratio.

    python -m bench.snapshot [--contacts 1000000] [--chunk 50000] [--rounds 2]
"""

import argparse
import asyncio
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.common import bench_env, fresh_database, prepare_tenant, report
from datamailer_core.campaigns.settings import CampaignSettings
from datamailer_core.campaigns.snapshot import (
    INTENDED_RECIPIENTS_FROM,
    INTENDED_RECIPIENTS_WHERE,
    run_snapshot,
)
from datamailer_core.db.engine import create_sessionmaker
from datamailer_core.models.contacts import BAD_VALIDATION_STATUSES
from datamailer_core.repositories import campaigns

# Share of contacts carrying each tag; the campaign includes `customers`, excludes `churned`.
TAGS = {"customers": 0.60, "churned": 0.10, "vip": 0.05}
CATEGORY = "newsletter"
_BAD = ", ".join(f"'{status}'" for status in BAD_VALIDATION_STATUSES)
_SHARES = ", ".join(f"('{slug}', {share})" for slug, share in TAGS.items())

# Set-based generation: a few statements over generate_series, random() seeded per run.
# Contacts: 5% unverified (NULL verified_at here and on their subscriptions), 3% hard
# bounced, 1% complained, 2% globally unsubscribed, 2% a bad validation status.
GENERATE = [
    "SELECT setseed(0.2026)",
    f"""
    INSERT INTO contacts (organization_id, email, normalized_email, verified_at, hard_bounced_at,
                          complained_at, global_unsubscribed_at, validation_status)
    SELECT (SELECT organization_id FROM audiences WHERE id = CAST(:audience_id AS bigint)),
           'User' || i || '@Example.com', 'user' || i || '@example.com',
           CASE WHEN r1 >= 0.05 THEN now() END, CASE WHEN r2 < 0.03 THEN now() END,
           CASE WHEN r3 < 0.01 THEN now() END, CASE WHEN r4 < 0.02 THEN now() END,
           CASE WHEN r5 < 0.02 THEN (ARRAY[{_BAD}])[1 + i % {len(BAD_VALIDATION_STATUSES)}]
                WHEN r5 < 0.50 THEN 'valid' ELSE 'unknown' END
    FROM (SELECT i, random() r1, random() r2, random() r3, random() r4, random() r5
          FROM generate_series(1, :contacts) i) g
    """,
    # One client subscription per contact: 4% unsubscribed, 2% pending.
    """
    INSERT INTO subscriptions (contact_id, audience_id, client_id, status, verified_at, unsubscribed_at)
    SELECT id, :audience_id, :client_id,
           CASE WHEN r < 0.04 THEN 'unsubscribed' WHEN r < 0.06 THEN 'pending' ELSE 'subscribed' END,
           verified_at, CASE WHEN r < 0.04 THEN now() END
    FROM (SELECT id, verified_at, random() r FROM contacts) c
    """,
    # Audience-level rows for 30% of the contacts, 1% of all contacts unsubscribed there.
    """
    INSERT INTO subscriptions (contact_id, audience_id, client_id, status, verified_at, unsubscribed_at)
    SELECT id, :audience_id, NULL, CASE WHEN r < 0.01 THEN 'unsubscribed' ELSE 'subscribed' END,
           verified_at, CASE WHEN r < 0.01 THEN now() END
    FROM (SELECT id, verified_at, random() r FROM contacts) c
    WHERE r < 0.30
    """,
    "INSERT INTO tags (audience_id, slug, name) SELECT :audience_id, slug, initcap(slug)"
    " FROM (VALUES " + _SHARES + ") AS v (slug, share)",
    f"""
    INSERT INTO contact_tags (contact_id, tag_id)
    SELECT contact_id, tag_id
    FROM (SELECT c.id AS contact_id, tags.id AS tag_id, v.share, random() AS r
          FROM contacts c CROSS JOIN tags JOIN (VALUES {_SHARES}) AS v (slug, share) ON v.slug = tags.slug) g
    WHERE r < share
    """,
    # `newsletter` disabled for 2% (1.4% at client level, 0.6% audience level), explicitly
    # enabled at client level for another 3%.
    """
    INSERT INTO category_preferences (contact_id, audience_id, client_id, tag, enabled)
    SELECT id, :audience_id, CASE WHEN r < 0.014 OR r >= 0.02 THEN CAST(:client_id AS bigint) END,
           :category, r >= 0.02
    FROM (SELECT id, random() r FROM contacts) c
    WHERE r < 0.05
    """,
]

# Same join and same tag filters as the snapshot's chunk statement, every row `pending`.
BARE = f"""
    INSERT INTO campaign_recipients (campaign_id, contact_id, email, status)
    SELECT CAST(:campaign_id AS bigint), c.id, c.email, 'pending'
    {INTENDED_RECIPIENTS_FROM}
    {INTENDED_RECIPIENTS_WHERE}
      AND (SELECT count(*) FROM contact_tags ct
           WHERE ct.contact_id = c.id AND ct.tag_id = ANY(CAST(:include_ids AS bigint[])))
          = cardinality(CAST(:include_ids AS bigint[]))
      AND NOT EXISTS (SELECT 1 FROM contact_tags ct
                      WHERE ct.contact_id = c.id AND ct.tag_id = ANY(CAST(:exclude_ids AS bigint[])))
"""


async def sql(engine: AsyncEngine, statement: str, **params: Any) -> list[Any]:
    """One autocommit statement (VACUUM cannot run in a transaction); its rows, if any."""
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        result = await conn.execute(text(statement), params)
        return list(result.all()) if result.returns_rows else []


async def generate(engine: AsyncEngine, contacts: int, audience_id: int, client_id: int) -> None:
    params = {"contacts": contacts, "audience_id": audience_id, "client_id": client_id, "category": CATEGORY}
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        for statement in GENERATE:
            await conn.execute(text(statement), {k: v for k, v in params.items() if f":{k}" in statement})


async def settle(engine: AsyncEngine) -> None:
    """Before each timed statement: fresh statistics, no dead rows, no checkpoint under way
    from the writes before it (CHECKPOINT needs a superuser or pg_checkpoint)."""
    await sql(engine, "VACUUM ANALYZE")
    await sql(engine, "CHECKPOINT")


async def create_campaign(engine: AsyncEngine, key: str, audience_id: int, client_id: int) -> int:
    definition = {"audience_id": audience_id, "subject": "News", "html_body": "<p>Hi</p>", "text_body": None,
                  "include_tags": ["customers"], "exclude_tags": ["churned"], "category_tag": CATEGORY}  # fmt: skip
    async with create_sessionmaker(engine)() as session, session.begin():
        campaign, _ = await campaigns.upsert_campaign(session, client_id, key, definition)
        return campaign.id


async def time_bare(engine: AsyncEngine, key: str, audience_id: int, client_id: int) -> float:
    """One bare statement into an empty `campaign_recipients`; its contact ids are kept
    (the first time) in `bench_bare` to compare with the snapshot's."""
    tag_ids = dict(await sql(engine, "SELECT slug, id FROM tags WHERE audience_id = :a", a=audience_id))
    campaign_id = await create_campaign(engine, key, audience_id, client_id)
    start = time.perf_counter()
    await sql(engine, BARE, campaign_id=campaign_id, audience_id=audience_id, client_id=client_id,
              include_ids=[tag_ids["customers"]], exclude_ids=[tag_ids["churned"]])  # fmt: skip
    seconds = time.perf_counter() - start
    await sql(engine, "CREATE TABLE IF NOT EXISTS bench_bare AS SELECT contact_id FROM campaign_recipients")
    [(rows, known)] = await sql(
        engine, "SELECT count(*), (SELECT count(*) FROM bench_bare) FROM campaign_recipients"
    )
    assert rows == known, (rows, known)
    return seconds


async def time_real(
    engine: AsyncEngine, key: str, audience_id: int, client_id: int, chunk: int
) -> tuple[float, dict[str, int]]:
    """The real snapshot, queued like the API does, then chunk after chunk; checked
    against the bare statement's rows and the campaign's counters. Returns its time and
    its rows by skip reason (`pending` for the rest)."""
    campaign_id = await create_campaign(engine, key, audience_id, client_id)
    async with create_sessionmaker(engine)() as session, session.begin():
        assert await campaigns.queue_campaign(session, campaign_id)
    start = time.perf_counter()
    inserted = await run_snapshot(create_sessionmaker(engine), campaign_id, chunk=chunk)
    seconds = time.perf_counter() - start
    [(status, recipients, skipped)] = await sql(
        engine, "SELECT status, recipient_count, skipped_count FROM campaigns WHERE id = :id", id=campaign_id
    )
    [(rows, skipped_rows, mismatched)] = await sql(
        engine,
        "SELECT count(r.id), count(r.id) FILTER (WHERE r.status = 'skipped'),"
        " count(*) FILTER (WHERE r.contact_id IS NULL OR b.contact_id IS NULL)"
        " FROM campaign_recipients r FULL JOIN bench_bare b ON b.contact_id = r.contact_id",
    )
    assert (status, rows, recipients, skipped_rows) == ("sending", inserted, inserted, skipped)
    assert mismatched == 0, f"{mismatched} contacts in only one of the snapshot and the bare statement"
    reasons = await sql(
        engine,
        "SELECT coalesce(skip_reason, 'pending'), count(*) FROM campaign_recipients GROUP BY 1 ORDER BY 2 DESC",
    )
    return seconds, dict(reasons)


async def measure(contacts: int, chunk: int, rounds: int, url: str) -> dict[str, Any]:
    engine = create_async_engine(url)
    try:
        [(audience_id, client_id)] = await sql(
            engine,
            "SELECT a.id, c.id FROM organizations o JOIN audiences a ON a.organization_id = o.id"
            " JOIN clients c ON c.organization_id = o.id WHERE o.slug = 'bench' AND a.slug = 'news'"
            " AND c.slug = 'app'",
        )
        start = time.perf_counter()
        await generate(engine, contacts, audience_id, client_id)
        generated = time.perf_counter() - start
        # Bare first, then alternate: bare, real | real, bare | ...; each into an empty table.
        order = [
            step for n in range(rounds) for step in (("bare", "real") if n % 2 == 0 else ("real", "bare"))
        ]
        times: dict[str, list[float]] = {"bare": [], "real": []}
        reasons: dict[str, int] = {}
        for n, which in enumerate(order):
            await sql(engine, "TRUNCATE campaign_recipients CASCADE")
            await settle(engine)
            key = f"bench-{which}-{n}"
            if which == "bare":
                times["bare"].append(await time_bare(engine, key, audience_id, client_id))
            else:
                seconds, reasons = await time_real(engine, key, audience_id, client_id, chunk)
                times["real"].append(seconds)
    finally:
        await engine.dispose()
    rows = sum(reasons.values())
    real, bare = min(times["real"]), min(times["bare"])
    return {"contacts": contacts, "chunk": chunk, "rounds": rounds, "generate_seconds": generated,
            "recipients": rows, "pending": reasons.get("pending", 0), "skipped": rows - reasons.get("pending", 0),
            "skipped_by_reason": {k: v for k, v in reasons.items() if k != "pending"},
            "seconds_real": real, "seconds_bare": bare, "ratio": real / bare, "target_ratio": 1.5,
            "rows_per_second_real": rows / real, "rows_per_second_bare": rows / bare,
            "all_seconds_real": times["real"], "all_seconds_bare": times["bare"]}  # fmt: skip


def run(contacts: int = 1_000_000, chunk: int | None = None, rounds: int = 2) -> dict[str, Any]:
    chunk = chunk or CampaignSettings().snapshot_chunk
    with fresh_database() as url:
        prepare_tenant(bench_env(url))
        figures = asyncio.run(measure(contacts, chunk, rounds, url))
    by_reason = figures["skipped_by_reason"]
    report(
        "snapshot",
        [
            ("contacts", f"{contacts:,}"),
            ("data generation", f"{figures['generate_seconds']:.1f} s"),
            ("chunk (contact ids)", f"{chunk:,}"),
            ("recipients written", f"{figures['recipients']:,}"),
            ("  pending", f"{figures['pending']:,}"),
            ("  skipped", f"{figures['skipped']:,}"),
            *[(f"    {reason}", f"{count:,}") for reason, count in by_reason.items()],
            ("snapshot (run_snapshot), best", f"{figures['seconds_real']:.2f} s"),
            ("bare INSERT ... SELECT, best", f"{figures['seconds_bare']:.2f} s"),
            ("  all runs, snapshot", ", ".join(f"{t:.2f}" for t in figures["all_seconds_real"])),
            ("  all runs, bare", ", ".join(f"{t:.2f}" for t in figures["all_seconds_bare"])),
            ("ratio (target <= 1.5x)", f"{figures['ratio']:.2f}x"),
            ("rows per second, snapshot", f"{figures['rows_per_second_real']:,.0f}"),
            ("rows per second, bare", f"{figures['rows_per_second_bare']:,.0f}"),
        ],
        figures,
    )
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=2)
    arguments = parser.parse_args()
    run(arguments.contacts, arguments.chunk, arguments.rounds)
