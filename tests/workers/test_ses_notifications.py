"""The `ses-webhooks` handler through a real PostgreSQL (real commits) and moto: SES's
documented notifications, as SNS envelopes and as raw deliveries, change the right rows
once even when each is handled three times at once; uncorrelated ones are kept; a
campaign whose first recipients bounce pauses itself until resumed."""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import text

from datamailer_core.campaigns.settings import CampaignSettings
from datamailer_core.models import Campaign, TransactionalMessage
from datamailer_core.repositories import campaigns
from datamailer_workers.deps import WorkerDeps, open_deps
from datamailer_workers.runtime import dispatch
from tests.api.campaign_factories import Group, builder, create_campaign
from tests.core import ses_samples as samples
from tests.factories import Tenant
from tests.workers.campaign_helpers import (
    counters_and_recount,
    load_campaign,
    queue,
    recipient_rows,
    running,
    sending_tenant,
    sends_by_recipient,
    wait_for_status,
    wait_until,
)
from tests.workers.conftest import WorkerEnv
from tests.workers.helpers import insert_queued, load, run_poller_until, seed_client, send_raw

SECRET = "test-secret-key"


@pytest.fixture
async def fast(worker_env: WorkerEnv) -> AsyncIterator[WorkerDeps]:
    settings = worker_env.settings(
        SES_MAX_SEND_RATE="2000",
        PUBLIC_BASE_URL="https://mail.example.com",
        CAMPAIGN_RATE_MIN_SAMPLE="10",
        CAMPAIGN_MAX_BOUNCE_RATE="0.05",
        CAMPAIGN_MAX_COMPLAINT_RATE="0.05",
    )
    async with open_deps(settings) as opened:
        yield opened


# Scenario building


async def add_endpoint(deps: WorkerDeps, client_id: int) -> None:
    async with deps.sessionmaker() as session, session.begin():
        await session.execute(
            text(
                "INSERT INTO webhook_endpoints (client_id, url, secret) VALUES (:c, 'https://hooks.test/x', 's')"
            ),
            {"c": client_id},
        )


async def sent_transactional(
    deps: WorkerDeps, to: str = "ada@example.com", **values: Any
) -> TransactionalMessage:
    """A transactional message as the handler leaves it after SES accepted it."""
    seeded = await seed_client(deps, verify_sender=False)
    await add_endpoint(deps, seeded.client_id)
    message = await insert_queued(deps, seeded, to=to, **values)
    async with deps.sessionmaker() as session, session.begin():
        await session.execute(
            text(
                "UPDATE transactional_messages SET status = 'sent', sent_at = now(), ses_message_id = :m WHERE id = :id"
            ),
            {"m": f"ses-{uuid.uuid4()}", "id": message.id},
        )
    return await load(deps, message.id)


async def sent_campaign(deps: WorkerDeps, tenant: Tenant, count: int, key: str = "nov") -> Campaign:
    """A campaign of `count` subscribers sent through moto's SES."""
    async with deps.sessionmaker() as session:
        await builder(session, tenant).add(Group(count))
        await session.commit()
    async with deps.sessionmaker() as session:
        campaign = await create_campaign(session, tenant, key, sender_id="news", text_body="Hi {{ email }}")
    await queue(deps, campaign.id)
    async with running(deps):
        await wait_for_status(deps, campaign.id, "sent")
    return campaign


async def handle_three_times_at_once(deps: WorkerDeps, body: dict[str, Any]) -> None:
    """Three workers decode and handle the same record concurrently, each in its own
    session and transaction."""
    raw = json.dumps(body)
    await asyncio.gather(*(dispatch(raw, deps, queue="ses-webhooks") for _ in range(3)))


def wrapped(ses: dict[str, Any], delivery: str) -> dict[str, Any]:
    return samples.sns_envelope(ses) if delivery == "sns" else ses


async def scalar(deps: WorkerDeps, sql: str, **params: Any) -> Any:
    async with deps.sessionmaker() as session:
        return (await session.execute(text(sql), params)).scalar_one()


async def rows(deps: WorkerDeps, sql: str, **params: Any) -> list[Any]:
    async with deps.sessionmaker() as session:
        return list((await session.execute(text(sql), params)).all())


async def webhook_types(deps: WorkerDeps) -> list[str]:
    found = await rows(deps, "SELECT event_type FROM webhook_deliveries ORDER BY id")
    return [r.event_type for r in found]


async def ses_events(deps: WorkerDeps) -> list[Any]:
    return await rows(deps, "SELECT * FROM email_events WHERE provider = 'ses' ORDER BY id")


DELIVERIES = ["sns", "raw"]
FORMS = ["event", "classic"]


# Transactional messages


@pytest.mark.parametrize("delivery", DELIVERIES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("subtype", ["General", "OnAccountSuppressionList"])
async def test_a_hard_bounce_suppresses_every_bounced_address_once(
    deps: WorkerDeps, delivery: str, form: str, subtype: str
) -> None:
    message = await sent_transactional(deps, to="Ada@Example.com", cc=["grace@example.com"])
    assert message.ses_message_id is not None
    ses = samples.bounce(
        message.ses_message_id,
        ["Ada@Example.com", "grace@example.com"],
        subtype=subtype,
        form=form,  # type: ignore[arg-type]
    )

    await handle_three_times_at_once(deps, wrapped(ses, delivery))

    after = await load(deps, message.id)
    assert after.status == "bounced"
    assert after.bounced_at is not None
    events = await ses_events(deps)
    assert len(events) == 1
    event = events[0]
    assert (event.event_type, event.transactional_message_id, event.ses_message_id) == (
        "bounce",
        message.id,
        message.ses_message_id,
    )
    assert event.metadata["bounce_type"] == "Permanent"
    assert event.metadata["bounce_subtype"] == subtype
    assert event.metadata["ses"] == ses
    assert event.occurred_at.isoformat().startswith("2017-08-05T00:41:02.669")
    # Both addresses are mailbox facts: suppressed once, in every organization.
    facts = await rows(deps, "SELECT reason FROM suppressions WHERE organization_id IS NULL")
    assert [f.reason for f in facts] == ["hard_bounce", "hard_bounce"]
    assert await scalar(
        deps, "SELECT hard_bounced_at IS NOT NULL FROM contacts WHERE normalized_email = 'ada@example.com'"
    )
    assert await webhook_types(deps) == ["contact.hard_bounced", "contact.hard_bounced"]
    payloads = await rows(deps, "SELECT payload FROM webhook_deliveries ORDER BY id")
    assert [p.payload["email"] for p in payloads] == ["ada@example.com", "grace@example.com"]
    assert payloads[0].payload["contact_id"] == message.contact_id
    assert payloads[0].payload["transactional_message_id"] == message.id


@pytest.mark.parametrize("delivery", DELIVERIES)
@pytest.mark.parametrize("bounce_type", ["Transient", "Undetermined"])
async def test_a_soft_bounce_is_recorded_without_suppression(
    deps: WorkerDeps, delivery: str, bounce_type: str
) -> None:
    message = await sent_transactional(deps)
    assert message.ses_message_id is not None
    ses = samples.bounce(message.ses_message_id, ["ada@example.com"], bounce_type=bounce_type)
    await handle_three_times_at_once(deps, wrapped(ses, delivery))

    assert (await load(deps, message.id)).status == "sent"
    events = await ses_events(deps)
    assert [(e.event_type, e.metadata["bounce_type"], e.metadata["hard"]) for e in events] == [
        ("bounce", bounce_type, False)
    ]
    assert await scalar(deps, "SELECT count(*) FROM suppressions") == 0
    assert await scalar(deps, "SELECT count(*) FROM contacts WHERE hard_bounced_at IS NOT NULL") == 0
    assert await webhook_types(deps) == []


@pytest.mark.parametrize("delivery", DELIVERIES)
@pytest.mark.parametrize("form", FORMS)
async def test_a_complaint_marks_the_message_and_suppresses_the_address(
    deps: WorkerDeps, delivery: str, form: str
) -> None:
    message = await sent_transactional(deps)
    assert message.ses_message_id is not None
    ses = samples.complaint(message.ses_message_id, ["ada@example.com"], form=form)  # type: ignore[arg-type]
    await handle_three_times_at_once(deps, wrapped(ses, delivery))

    after = await load(deps, message.id)
    assert (after.status, after.complained_at is not None) == ("complained", True)
    [event] = await ses_events(deps)
    assert (event.event_type, event.metadata["feedback_type"]) == ("complaint", "abuse")
    assert [r.reason for r in await rows(deps, "SELECT reason FROM suppressions")] == ["complaint"]
    assert await scalar(deps, "SELECT complained_at IS NOT NULL FROM contacts")
    assert await webhook_types(deps) == ["contact.complained"]
    [payload] = await rows(deps, "SELECT payload FROM webhook_deliveries")
    assert payload.payload["feedback_type"] == "abuse"


@pytest.mark.parametrize("delivery", DELIVERIES)
@pytest.mark.parametrize("form", FORMS)
async def test_a_delivery_sets_delivered_at_once(deps: WorkerDeps, delivery: str, form: str) -> None:
    message = await sent_transactional(deps)
    assert message.ses_message_id is not None
    ses = samples.delivery(message.ses_message_id, "ada@example.com", form=form)  # type: ignore[arg-type]
    await handle_three_times_at_once(deps, wrapped(ses, delivery))
    first = await load(deps, message.id)
    assert first.status == "sent"
    assert first.delivered_at is not None
    assert first.delivered_at.isoformat().startswith("2016-10-19T23:21:04.133")

    # The same delivery reported again under another SNS MessageId changes nothing more.
    await handle_three_times_at_once(deps, samples.sns_envelope(ses))
    assert (await load(deps, message.id)).delivered_at == first.delivered_at
    assert [e.event_type for e in await ses_events(deps)] == ["delivered", "delivered"]
    assert await webhook_types(deps) == ["message.delivered"]


@pytest.mark.parametrize(
    ("make", "event_type", "status", "reason"),
    [
        (samples.reject, "reject", "failed", "ses_reject"),
        (samples.rendering_failure, "rendering_failure", "failed", "ses_rendering_failure"),
        (samples.delivery_delay, "delivery_delay", "sent", None),
    ],
)
async def test_reject_and_rendering_failure_fail_the_message_and_a_delay_is_recorded(
    deps: WorkerDeps, make: Any, event_type: str, status: str, reason: str | None
) -> None:
    message = await sent_transactional(deps)
    await handle_three_times_at_once(
        deps, samples.sns_envelope(make(message.ses_message_id, "ada@example.com"))
    )
    after = await load(deps, message.id)
    assert (after.status, after.status_reason) == (status, reason)
    assert [e.event_type for e in await ses_events(deps)] == [event_type]
    assert await scalar(deps, "SELECT count(*) FROM suppressions") == 0


@pytest.mark.parametrize("delivery", DELIVERIES)
async def test_an_uncorrelated_notification_is_kept_and_changes_nothing_else(
    deps: WorkerDeps, delivery: str
) -> None:
    message = await sent_transactional(deps)
    ses = samples.bounce("ses-id-of-someone-else", ["ada@example.com"])
    await handle_three_times_at_once(deps, wrapped(ses, delivery))

    [event] = await ses_events(deps)
    assert event.event_type == "bounce"
    assert event.ses_message_id == "ses-id-of-someone-else"
    assert (
        event.transactional_message_id,
        event.campaign_recipient_id,
        event.contact_id,
        event.client_id,
    ) == (
        None,
        None,
        None,
        None,
    )
    assert (await load(deps, message.id)).status == "sent"
    assert await scalar(deps, "SELECT count(*) FROM suppressions") == 0
    assert await webhook_types(deps) == []


async def test_raw_sns_envelopes_on_the_queue_are_normalized_by_the_poller(deps: WorkerDeps) -> None:
    message = await sent_transactional(deps)
    assert message.ses_message_id is not None
    envelope = samples.sns_envelope(samples.bounce(message.ses_message_id, ["ada@example.com"]))
    for _ in range(2):
        await send_raw(deps, json.dumps(envelope), "ses-webhooks")
    await send_raw(
        deps, json.dumps(samples.delivery(message.ses_message_id, "ada@example.com")), "ses-webhooks"
    )

    async def handled() -> bool:
        return (
            len(await ses_events(deps)) == 2
            and await scalar(
                deps,
                "SELECT count(*) FROM email_events WHERE provider = 'ses'",
            )
            == 2
        )

    await run_poller_until(deps, handled, queue="ses-webhooks")
    await asyncio.sleep(0.5)
    assert sorted(e.event_type for e in await ses_events(deps)) == ["bounce", "delivered"]
    assert (await load(deps, message.id)).status == "bounced"


# Campaigns


@pytest.fixture
async def tenant(fast: WorkerDeps) -> Tenant:
    tenant = await sending_tenant(fast)
    await add_endpoint(fast, tenant.scope.client.id)
    return tenant


async def test_campaign_feedback_changes_each_recipient_once_and_counters_match_the_recount(
    fast: WorkerDeps, tenant: Tenant
) -> None:
    campaign = await sent_campaign(fast, tenant, 4)
    first, second, third, fourth = await recipient_rows(fast, campaign.id)

    for body in (
        samples.sns_envelope(samples.delivery(first.ses_message_id, first.email)),
        samples.delivery(first.ses_message_id, first.email, form="classic"),  # raw, other form
        samples.sns_envelope(samples.bounce(second.ses_message_id, [second.email])),
        samples.sns_envelope(samples.complaint(third.ses_message_id, [third.email])),
        samples.bounce(fourth.ses_message_id, [fourth.email], bounce_type="Transient"),
    ):
        await handle_three_times_at_once(fast, body)

    states = {r.id: (r.status, r.delivered_at is not None) for r in await recipient_rows(fast, campaign.id)}
    assert states == {
        first.id: ("sent", True),
        second.id: ("bounced", False),
        third.id: ("complained", False),
        fourth.id: ("sent", False),
    }
    kept, recount = await counters_and_recount(fast, campaign.id)
    assert kept == recount
    assert (kept["delivered_count"], kept["bounce_count"], kept["complaint_count"], kept["sent_count"]) == (
        1,
        1,
        1,
        4,
    )
    assert sorted(await webhook_types(fast)) == [
        "contact.complained",
        "contact.hard_bounced",
        "message.delivered",
    ]
    events = await ses_events(fast)
    assert len(events) == 5
    assert all(e.campaign_id == campaign.id and e.client_id == tenant.scope.client.id for e in events)
    # A sent campaign is not paused by late feedback (nothing is left to send).
    assert (await load_campaign(fast, campaign.id)).status == "sent"


class SlowSes:
    """The real sesv2 client, each send a little slower, so a campaign is still sending
    when its first bounces come back."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.started: list[float] = []

    async def send_email(self, **request: Any) -> Any:
        self.started.append(time.monotonic())
        await asyncio.sleep(0.02)
        return await self.real.send_email(**request)

    async def send_bulk_email(self, **request: Any) -> Any:
        self.started.extend(time.monotonic() for _ in request["BulkEmailEntries"])
        await asyncio.sleep(0.02)
        return await self.real.send_bulk_email(**request)


FEED = CampaignSettings(CAMPAIGN_BATCH_SIZE=10, CAMPAIGN_MAX_BATCHES_IN_FLIGHT=2, _env_file=None)
CONCURRENCY = 2


async def sent_rows(deps: WorkerDeps, campaign_id: int) -> list[Any]:
    return [r for r in await recipient_rows(deps, campaign_id) if r.status == "sent"]


async def test_a_campaign_whose_first_recipients_bounce_pauses_itself_until_resumed(
    fast: WorkerDeps, tenant: Tenant, aws_endpoint: str
) -> None:
    async with fast.sessionmaker() as session:
        await builder(session, tenant).add(Group(300))
        await session.commit()
    async with fast.sessionmaker() as session:
        campaign = await create_campaign(session, tenant, "risky", sender_id="news", text_body="Hi")
    ses = SlowSes(fast.sesv2)
    deps = replace(fast, sesv2=ses)
    await queue(deps, campaign.id)

    async with running(deps, feed=FEED, concurrency=CONCURRENCY):

        async def ten_sent() -> bool:
            return len(await sent_rows(deps, campaign.id)) >= 10

        await wait_until(ten_sent)
        first = (await sent_rows(deps, campaign.id))[:3]
        # The first recipients' hard bounces come back while the campaign is sending.
        for row in first:
            await dispatch(
                json.dumps(samples.sns_envelope(samples.bounce(row.ses_message_id, [row.email]))),
                deps,
                queue="ses-webhooks",
            )
        paused_at = time.monotonic()
        paused = await load_campaign(deps, campaign.id)
        assert (paused.status, paused.paused_reason) == ("paused", "bounce_rate_exceeded")
        await asyncio.sleep(2)
    # At most the parts already claimed when it paused went out.
    assert len([t for t in ses.started if t > paused_at]) <= CONCURRENCY * FEED.batch_size
    states = [r.status for r in await recipient_rows(deps, campaign.id)]
    sent_before_resume = states.count("sent") + states.count("bounced")
    assert states.count("bounced") == 3
    assert states.count("pending") == 300 - sent_before_resume
    assert "sending" not in states
    assert sorted(await webhook_types(deps)) == ["campaign.paused"] + ["contact.hard_bounced"] * 3
    [payload] = await rows(
        deps, "SELECT payload FROM webhook_deliveries WHERE event_type = 'campaign.paused'"
    )
    assert payload.payload["reason"] == "bounce_rate_exceeded"
    assert payload.payload["campaign_key"] == "risky"

    # Nothing more is sent while it stays paused.
    calls = len(ses.started)
    async with running(deps, feed=FEED, concurrency=CONCURRENCY):
        await asyncio.sleep(2)
    assert len(ses.started) == calls

    async with deps.sessionmaker() as session, session.begin():
        await campaigns.resume(session, await load_campaign(deps, campaign.id))
    resumed = await load_campaign(deps, campaign.id)
    assert (resumed.status, resumed.paused_reason) == ("sending", None)
    # The guard does not pause it again at once: the next bounce would have to push
    # the rate past the threshold again (3 of 300 sent stays under 5%).
    async with running(deps, feed=FEED, concurrency=CONCURRENCY):
        await wait_for_status(deps, campaign.id, "sent")
    sends = sends_by_recipient(aws_endpoint)
    assert len(sends) == 300
    assert set(sends.values()) == {1}
    kept, recount = await counters_and_recount(deps, campaign.id)
    assert kept == recount
    assert (kept["sent_count"], kept["bounce_count"]) == (300, 3)


async def test_the_complaint_rate_pauses_a_sending_campaign_with_its_reason(
    fast: WorkerDeps, tenant: Tenant
) -> None:
    campaign = await sent_campaign(fast, tenant, 12)
    recipients = await recipient_rows(fast, campaign.id)
    async with fast.sessionmaker() as session, session.begin():
        # As if the snapshot were still being sent.
        await session.execute(
            text("UPDATE campaigns SET status = 'sending' WHERE id = :id"), {"id": campaign.id}
        )
    await handle_three_times_at_once(
        fast, samples.sns_envelope(samples.complaint(recipients[0].ses_message_id, [recipients[0].email]))
    )
    paused = await load_campaign(fast, campaign.id)
    assert (paused.status, paused.paused_reason) == ("paused", "complaint_rate_exceeded")
    assert paused.complaint_count == 1
    assert (await webhook_types(fast)).count("campaign.paused") == 1


async def test_below_the_minimum_sample_nothing_pauses(fast: WorkerDeps, tenant: Tenant) -> None:
    campaign = await sent_campaign(fast, tenant, 5)
    recipients = await recipient_rows(fast, campaign.id)
    async with fast.sessionmaker() as session, session.begin():
        await session.execute(
            text("UPDATE campaigns SET status = 'sending' WHERE id = :id"), {"id": campaign.id}
        )
    for row in recipients[:3]:
        await handle_three_times_at_once(
            fast, samples.sns_envelope(samples.bounce(row.ses_message_id, [row.email]))
        )
    after = await load_campaign(fast, campaign.id)
    assert (after.status, after.paused_reason, after.bounce_count) == ("sending", None, 3)
