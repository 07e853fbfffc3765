"""The transactional-email handler under at-least-once delivery, through moto's SQS and
SES and a real database: one send per message whatever the queue does."""

import asyncio

import pytest
from sqlalchemy import update

from datamailer_core.models import Contact
from datamailer_workers.deps import WorkerDeps, open_deps
from datamailer_workers.errors import RetryLater
from datamailer_workers.runtime import dispatch
from tests.workers.conftest import WorkerEnv
from tests.workers.helpers import (
    FailingSes,
    body_of,
    claim_and_abandon,
    events,
    insert_queued,
    load,
    publish,
    queue_depth,
    run_poller_until,
    seed_client,
    sent_mail,
    statuses,
    with_ses,
)


async def test_plain_message_is_sent_with_sender_name_and_recorded(
    deps: WorkerDeps, worker_env: WorkerEnv
) -> None:
    seeded = await seed_client(deps)
    message = await insert_queued(deps, seeded, subject="Your code", html_body="<b>42</b>", text_body="42")
    await publish(deps, message)

    async def sent() -> bool:
        return (await load(deps, message.id)).status == "sent"

    await run_poller_until(deps, sent)

    [mail] = sent_mail(worker_env.aws_endpoint)
    assert mail.source == "Support Team <support@app.example.com>"
    assert mail.subject == "Your code"
    assert mail.destinations == {"ToAddresses": ["ada@example.com"]}
    row = await load(deps, message.id)
    assert row.ses_message_id == mail.id
    assert row.sent_at is not None
    assert (row.attempt_count, row.lease_owner, row.lease_expires_at) == (1, None, None)
    [event] = await events(deps, message.id)
    assert (event.event_type, event.ses_message_id, event.client_id) == ("sent", mail.id, seeded.client_id)
    assert await queue_depth(deps, "transactional-email") == 0


async def test_same_queue_message_three_times_sends_once(deps: WorkerDeps, worker_env: WorkerEnv) -> None:
    seeded = await seed_client(deps)
    message = await insert_queued(deps, seeded)
    await publish(deps, message, times=3)

    async def drained() -> bool:
        return await queue_depth(deps, "transactional-email") == 0

    await run_poller_until(deps, drained, concurrency=1)

    assert len(sent_mail(worker_env.aws_endpoint)) == 1
    assert (await load(deps, message.id)).status == "sent"
    assert [e.event_type for e in await events(deps, message.id)] == ["sent"]
    skips = deps.metrics.registry.get_sample_value(
        "datamailer_idempotency_skips_total", {"stream": "transactional"}
    )
    assert skips == 2


async def test_simultaneous_duplicates_claim_once(deps: WorkerDeps, worker_env: WorkerEnv) -> None:
    seeded = await seed_client(deps)
    message = await insert_queued(deps, seeded)
    body = body_of(message)

    results = await asyncio.gather(*(dispatch(body, deps) for _ in range(3)), return_exceptions=True)

    assert len(sent_mail(worker_env.aws_endpoint)) == 1
    # The losers either saw the live lease (come back later) or the finished row.
    assert all(r is None or isinstance(r, RetryLater) for r in results), results
    assert (await load(deps, message.id)).attempt_count == 1


async def test_worker_killed_after_claim_is_resent_once_after_lease_expiry(worker_env: WorkerEnv) -> None:
    async with open_deps(worker_env.settings(SEND_LEASE_SECONDS="1")) as deps:
        seeded = await seed_client(deps)
        message = await insert_queued(deps, seeded)
        await claim_and_abandon(deps, message, lease_seconds=1)
        await publish(deps, message)

        async def sent() -> bool:
            return (await load(deps, message.id)).status == "sent"

        await run_poller_until(deps, sent)

        assert len(sent_mail(worker_env.aws_endpoint)) == 1
        row = await load(deps, message.id)
        assert row.attempt_count == 2
        assert row.ses_message_id == sent_mail(worker_env.aws_endpoint)[0].id


async def test_throttling_is_retried_later_sent_once_and_lowers_the_rate(
    deps: WorkerDeps, worker_env: WorkerEnv
) -> None:
    seeded = await seed_client(deps)
    message = await insert_queued(deps, seeded)
    throttled = with_ses(deps, FailingSes(deps.sesv2, "Throttling", times=2))
    await publish(deps, message)

    async def sent() -> bool:
        return (await load(deps, message.id)).status == "sent"

    await run_poller_until(throttled, sent, timeout=20)

    assert len(sent_mail(worker_env.aws_endpoint)) == 1
    row = await load(deps, message.id)
    assert row.attempt_count == 3
    assert [e.event_type for e in await events(deps, message.id)] == ["sent"]
    state = await deps.rate_limiter.state()
    assert state is not None
    max_rate = deps.settings.ses.max_send_rate
    assert state.rate == pytest.approx(max_rate * 0.8**2, rel=0.01)
    assert deps.metrics.registry.get_sample_value("datamailer_ses_throttles_total") == 2


async def test_message_rejected_fails_with_reason_and_is_acknowledged(
    deps: WorkerDeps, worker_env: WorkerEnv
) -> None:
    # moto rejects a sender identity that was never verified.
    seeded = await seed_client(deps, verify_sender=False)
    message = await insert_queued(deps, seeded)
    await publish(deps, message)

    async def drained() -> bool:
        return await queue_depth(deps, "transactional-email") == 0

    await run_poller_until(deps, drained)

    row = await load(deps, message.id)
    assert (row.status, row.status_reason, row.attempt_count) == ("failed", "MessageRejected", 1)
    assert row.last_error is not None
    assert "not verified" in row.last_error
    [event] = await events(deps, message.id)
    assert event.event_type == "failed"
    assert event.metadata_["reason"] == "MessageRejected"
    assert sent_mail(worker_env.aws_endpoint) == []
    assert await queue_depth(deps, "transactional-email-dlq") == 0


async def test_payload_not_matching_the_row_fails_it_without_sending(
    deps: WorkerDeps, worker_env: WorkerEnv
) -> None:
    seeded = await seed_client(deps)
    message = await insert_queued(deps, seeded)
    forged = body_of(message).replace(message.idempotency_key, "someone-else")

    await dispatch(forged, deps)

    row = await load(deps, message.id)
    assert (row.status, row.status_reason) == ("failed", "queue_payload_mismatch")
    assert sent_mail(worker_env.aws_endpoint) == []
    # The genuine message, arriving later, finds a terminal row and sends nothing.
    await dispatch(body_of(message), deps)
    assert sent_mail(worker_env.aws_endpoint) == []


async def test_contact_that_bounced_after_queueing_is_skipped_at_claim(
    deps: WorkerDeps, worker_env: WorkerEnv
) -> None:
    seeded = await seed_client(deps)
    message = await insert_queued(deps, seeded)
    async with deps.sessionmaker() as session, session.begin():
        await session.execute(
            update(Contact).where(Contact.id == message.contact_id).values(hard_bounced_at=Contact.created_at)
        )

    await dispatch(body_of(message), deps)

    row = await load(deps, message.id)
    assert (row.status, row.status_reason) == ("skipped", "hard_bounce")
    assert [(e.event_type, e.metadata_) for e in await events(deps, message.id)] == [
        ("skipped", {"reason": "hard_bounce"})
    ]
    assert sent_mail(worker_env.aws_endpoint) == []


async def test_expired_lease_under_fail_policy_is_marked_outcome_unknown(worker_env: WorkerEnv) -> None:
    settings = worker_env.settings(TRANSACTIONAL_EXPIRED_LEASE_POLICY="fail")
    async with open_deps(settings) as deps:
        seeded = await seed_client(deps)
        message = await insert_queued(deps, seeded)
        await claim_and_abandon(deps, message, lease_seconds=0.05)
        await asyncio.sleep(0.1)

        await dispatch(body_of(message), deps)

        row = await load(deps, message.id)
        assert (row.status, row.status_reason) == ("failed", "send_outcome_unknown")
        assert sent_mail(worker_env.aws_endpoint) == []


async def test_unsafe_stored_header_fails_the_message_instead_of_sending(
    deps: WorkerDeps, worker_env: WorkerEnv
) -> None:
    seeded = await seed_client(deps)
    message = await insert_queued(deps, seeded, headers={"X-Note": "a\r\nBcc: victim@example.com"})

    await dispatch(body_of(message), deps)

    row = await load(deps, message.id)
    assert (row.status, row.status_reason) == ("failed", "invalid_headers")
    assert sent_mail(worker_env.aws_endpoint) == []
    assert await statuses(deps) == {"failed": 1}
