"""`datamailer campaigns ...`: the runbook's procedures against a real database, named
by id or by client and key; safe to run twice; one-line errors."""

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from typer.testing import CliRunner

from datamailer_server.main import app
from tests.api.campaign_factories import Group, builder, create_campaign, set_recipient_status
from tests.conftest import run_sync
from tests.factories import TenantFactory


@dataclass(frozen=True)
class Scenario:
    campaign_id: int
    failed: int


@pytest.fixture
def database(make_database: Callable[[], str], monkeypatch: pytest.MonkeyPatch) -> str:
    url = make_database()
    for name, value in {
        "DATABASE_URL": url,
        "DATAMAILER_ENV": "test",
        "SECRET_KEY": "cli-test-secret",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    }.items():
        monkeypatch.setenv(name, value)
    return url


async def _session(url: str) -> AsyncIterator[AsyncSession]:
    engine = create_async_engine(url)
    try:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            yield session
    finally:
        await engine.dispose()


async def _scenario(url: str) -> Scenario:
    async for session in _session(url):
        tenant = await TenantFactory(session, "cli-test-secret").create()
        await builder(session, tenant).add(Group(6))
        await session.commit()
        campaign = await create_campaign(session, tenant, status="sending")
        await session.execute(
            text("UPDATE campaigns SET snapshot_completed_at = now() WHERE id = :id"), {"id": campaign.id}
        )
        await session.execute(
            text(
                "INSERT INTO campaign_recipients (campaign_id, contact_id, email, status, sent_at)"
                " SELECT :id, c.id, c.email, 'sent', now() FROM contacts c"
            ),
            {"id": campaign.id},
        )
        await session.commit()
        rows = await session.execute(
            text("SELECT id FROM campaign_recipients WHERE campaign_id = :id ORDER BY id LIMIT 2"),
            {"id": campaign.id},
        )
        await set_recipient_status(session, campaign.id, "failed", [r.id for r in rows], sent_at=None)
        return Scenario(campaign.id, 2)
    raise AssertionError("unreachable")


def invoke(*args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(app, list(args))
    if ok:
        assert result.exit_code == 0, result.output
    return result.output


def test_status_pause_resume_and_recompute_by_id_or_by_client_and_key(database: str) -> None:
    scenario = run_sync(_scenario(database))
    by_id = str(scenario.campaign_id)

    status = invoke("campaigns", "status", by_id)
    assert f"campaign {by_id} app/nov: sending" in status
    assert "failed=2 sent=4" in status

    assert (
        invoke("campaigns", "pause", "--client", "app", "--key", "nov").strip() == f"campaign {by_id}: paused"
    )
    assert invoke("campaigns", "pause", by_id).strip() == f"campaign {by_id}: paused"
    assert invoke("campaigns", "resume", by_id).strip() == f"campaign {by_id}: sending"

    counters = invoke("campaigns", "recompute-stats", by_id)
    assert "recipient_count=6 sent_count=4 skipped_count=0 failed_count=2" in counters
    assert invoke("campaigns", "recompute-stats", by_id) == counters


def test_retry_failed_resets_only_failed_recipients_once(database: str) -> None:
    scenario = run_sync(_scenario(database))
    by_id = str(scenario.campaign_id)

    first = invoke("campaigns", "retry-failed", by_id)
    second = invoke("campaigns", "retry-failed", by_id)

    assert "2 failed recipients back to pending" in first
    assert "0 failed recipients back to pending" in second
    assert "pending=2 sent=4" in invoke("campaigns", "status", by_id)


def test_campaign_commands_fail_with_one_line(database: str) -> None:
    run_sync(_scenario(database))
    missing = CliRunner().invoke(app, ["campaigns", "status", "999999"])
    unnamed = CliRunner().invoke(app, ["campaigns", "pause"])
    unknown_client = CliRunner().invoke(app, ["campaigns", "resume", "--client", "nobody", "--key", "x"])

    assert missing.exit_code == 1
    assert missing.output.strip().splitlines() == ["error: no such campaign (campaign: not_found)"]
    assert unnamed.exit_code == 1
    assert "name a campaign" in unnamed.output
    assert unknown_client.exit_code == 1
    assert "client 'nobody' not found" in unknown_client.output


async def _pause_itself(url: str, campaign_id: int) -> None:
    async for session in _session(url):
        await session.execute(
            text(
                "UPDATE campaigns SET status = 'paused', paused_reason = 'bounce_rate_exceeded' WHERE id = :id"
            ),
            {"id": campaign_id},
        )
        await session.commit()


def test_status_shows_why_a_campaign_paused_itself_and_resume_clears_it(database: str) -> None:
    scenario = run_sync(_scenario(database))
    by_id = str(scenario.campaign_id)
    run_sync(_pause_itself(database, scenario.campaign_id))

    assert f"campaign {by_id} app/nov: paused (bounce_rate_exceeded)" in invoke("campaigns", "status", by_id)
    assert invoke("campaigns", "resume", by_id).strip() == f"campaign {by_id}: sending"
    status = invoke("campaigns", "status", by_id)
    assert f"campaign {by_id} app/nov: sending\n" in status
    assert "bounce_rate_exceeded" not in status
