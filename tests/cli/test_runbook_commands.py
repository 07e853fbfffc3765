"""The runbook's queue and contact procedures, as an operator runs them (a `datamailer`
process) against moto's server and a committed database, with the real worker handlers
doing the sending before and after."""

import json

import pytest
from sqlalchemy import select, text, update

from datamailer_core.metrics import Metrics
from datamailer_core.models import Contact, Suppression, TransactionalMessage
from datamailer_core.repositories import contacts
from datamailer_server import dlq
from datamailer_workers.deps import WorkerDeps, open_deps
from tests.api.campaign_factories import Group, builder, create_campaign
from tests.cli.test_commands import Cli
from tests.workers.campaign_helpers import (
    queue,
    recipient_rows,
    running,
    sending_tenant,
    sends_by_recipient,
    wait_for_status,
)
from tests.workers.conftest import WorkerEnv, deps, worker_env
from tests.workers.helpers import (
    FailingSes,
    insert_queued,
    load,
    publish,
    queue_depth,
    run_poller_until,
    seed_client,
    sent_mail,
    set_queue_attributes,
    with_ses,
)

__all__ = ["deps", "worker_env"]  # the workers' fixtures, for this folder too

DLQ = "transactional-email-dlq"


@pytest.fixture
def cli(worker_env: WorkerEnv) -> Cli:
    return Cli(worker_env.environ())


async def _poison(deps: WorkerDeps, count: int) -> list[TransactionalMessage]:
    """`count` queued messages that SES throttles until the queue gives them up to its
    DLQ (after two receives here, to keep the test short)."""
    dlq_arn = (
        await deps.sqs.get_queue_attributes(
            QueueUrl=(await deps.sqs.get_queue_url(QueueName=DLQ))["QueueUrl"], AttributeNames=["QueueArn"]
        )
    )["Attributes"]["QueueArn"]
    await set_queue_attributes(
        deps,
        "transactional-email",
        RedrivePolicy=json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"}),
    )
    seeded = await seed_client(deps)
    messages = [await insert_queued(deps, seeded, to=f"user{i}@example.com") for i in range(count)]
    for message in messages:
        await publish(deps, message)
    outage = with_ses(deps, FailingSes(deps.sesv2, "Throttling", times=10**6))

    async def all_dead() -> bool:
        return await queue_depth(deps, DLQ) == count

    await run_poller_until(outage, all_dead, timeout=60)
    return messages


async def test_dlq_inspect_leaves_the_messages_and_replay_after_the_fix_sends_each_once(
    deps: WorkerDeps, cli: Cli, worker_env: WorkerEnv
) -> None:
    messages = await _poison(deps, 3)
    assert {(await load(deps, m.id)).status for m in messages} == {"queued"}
    assert sent_mail(worker_env.aws_endpoint) == []

    inspected = cli("dlq", "inspect", "transactional-email").stdout.splitlines()
    assert inspected[0] == f"{DLQ}: about 3 messages"
    assert len(inspected) == 4
    assert all("transactional-email v1" in line for line in inspected[1:])
    assert all(any(f'"transactional_message_id":{m.id}' in line for m in messages) for line in inspected[1:])
    # Sampling took nothing away: all three are there and visible again.
    assert await queue_depth(deps, DLQ) == 3
    again = cli("dlq", "inspect", "transactional-email", "--limit", "2").stdout.splitlines()
    assert len(again) == 3

    # The cause is fixed (SES answers again): replay, and the real worker sends them.
    replayed = cli("dlq", "replay", "transactional-email")
    assert replayed.stdout.strip() == "replayed 3 messages into transactional-email"
    assert "replayed 3" in replayed.stderr  # progress
    assert await queue_depth(deps, DLQ) == 0

    async def all_sent() -> bool:
        return {(await load(deps, m.id)).status for m in messages} == {"sent"}

    await run_poller_until(deps, all_sent)
    # The replayed copies are marked: the worker that took them counts them on /metrics.
    replays = deps.metrics.registry.get_sample_value(
        "datamailer_dlq_replays_total", {"queue": "transactional-email"}
    )
    assert replays == 3
    assert sorted(mail.destinations["ToAddresses"][0] for mail in sent_mail(worker_env.aws_endpoint)) == [
        f"user{i}@example.com" for i in range(3)
    ]
    assert await queue_depth(deps, "transactional-email") == 0

    # Twice is safe: nothing left to replay, nothing sent again.
    second = cli("dlq", "replay", "transactional-email")
    assert second.stdout.strip() == "the transactional-email DLQ is empty: nothing replayed"
    assert len(sent_mail(worker_env.aws_endpoint)) == 3


async def test_dlq_replay_with_a_limit_moves_that_many_and_counts_them(
    deps: WorkerDeps, worker_env: WorkerEnv
) -> None:
    await _poison(deps, 3)
    metrics = Metrics()
    seen: list[int] = []
    moved = await dlq.replay(
        worker_env.settings(), "transactional-email", 2, progress=seen.append, metrics=metrics
    )
    assert moved == 2
    assert seen == [2]
    assert (
        metrics.registry.get_sample_value("datamailer_dlq_replays_total", {"queue": "transactional-email"})
        == 2
    )
    assert await queue_depth(deps, DLQ) == 1
    assert await queue_depth(deps, "transactional-email") == 2


def test_dlq_commands_refuse_an_unknown_queue_in_one_line(cli: Cli) -> None:
    for command in ("inspect", "replay"):
        result = cli("dlq", command, "bogus-queue", ok=False)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            "error: unknown queue 'bogus-queue'; one of transactional-email, campaign-email, "
            "ses-webhooks, email-events"
        ]


async def test_contacts_suppress_blocks_transactional_mail_is_idempotent_and_holds_for_new_contacts(
    deps: WorkerDeps, cli: Cli, worker_env: WorkerEnv
) -> None:
    seeded = await seed_client(deps)
    async with deps.sessionmaker() as session, session.begin():
        ada, _ = await contacts.get_or_create_contact(session, seeded.organization_id, "ada@example.com")

    first = cli(
        "contacts", "suppress", " Ada@Example.COM ", "--reason", "complaint", "--organization", "acme"
    )
    assert (
        first.stdout.strip()
        == "suppressed ada@example.com (complaint) in organization acme: 1 contacts changed"
    )
    second = cli("contacts", "suppress", "ada@example.com", "--reason", "complaint", "--organization", "acme")
    assert "no contact changed" in second.stdout
    async with deps.sessionmaker() as session:
        complained = await session.scalar(select(Contact.complained_at).where(Contact.id == ada.id))
        rows = (await session.execute(select(Suppression.organization_id, Suppression.reason))).all()
    assert complained is not None
    assert rows == [(seeded.organization_id, "complaint")]

    # The worker re-checks at claim time: the queued message is skipped, nothing is sent.
    message = await insert_queued(deps, seeded, to="ada@example.com")
    await publish(deps, message)

    async def settled() -> bool:
        return (await load(deps, message.id)).status != "queued"

    await run_poller_until(deps, settled)
    row = await load(deps, message.id)
    assert (row.status, row.status_reason) == ("skipped", "complaint")
    assert sent_mail(worker_env.aws_endpoint) == []

    # Every organization, before the contact exists: it starts suppressed when created.
    cli("contacts", "suppress", "grace@example.com", "--reason", "hard_bounce")
    async with deps.sessionmaker() as session, session.begin():
        grace, created = await contacts.get_or_create_contact(
            session, seeded.organization_id, "grace@example.com"
        )
    assert created
    assert grace.hard_bounced_at is not None


def test_contacts_suppress_refuses_bad_input_in_one_line(cli: Cli) -> None:
    cases = {
        ("not-an-address", "--reason", "hard_bounce"): "error: not a valid email address: 'not-an-address'",
        (
            "a@example.com",
            "--reason",
            "vacation",
        ): "error: unknown reason 'vacation'; one of hard_bounce, complaint",
        (
            "a@example.com",
            "--reason",
            "complaint",
            "--organization",
            "nope",
        ): "error: organization 'nope' not found",
    }
    for args, expected in cases.items():
        result = cli("contacts", "suppress", *args, ok=False)
        assert result.returncode == 1
        [line] = result.stderr.strip().splitlines()
        assert line.startswith(expected)


async def test_transactional_requeue_stale_publishes_only_rows_stuck_queued(
    deps: WorkerDeps, cli: Cli, worker_env: WorkerEnv
) -> None:
    seeded = await seed_client(deps)
    stuck = await insert_queued(deps, seeded, to="stuck@example.com")
    fresh = await insert_queued(deps, seeded, to="fresh@example.com")
    async with deps.sessionmaker() as session, session.begin():
        await session.execute(
            update(TransactionalMessage)
            .where(TransactionalMessage.id == stuck.id)
            .values(updated_at=TransactionalMessage.updated_at - text("interval '1 hour'"))
        )

    assert cli("transactional", "requeue-stale", "--older-than", "600").stdout.strip() == (
        "re-enqueued 1 transactional messages"
    )
    assert await queue_depth(deps, "transactional-email") == 1
    # The re-enqueued row was touched: a second run right after finds nothing.
    assert cli("transactional", "requeue-stale", "--older-than", "600").stdout.strip() == (
        "re-enqueued 0 transactional messages"
    )

    async def stuck_sent() -> bool:
        return (await load(deps, stuck.id)).status == "sent"

    await run_poller_until(deps, stuck_sent)
    assert (await load(deps, fresh.id)).status == "queued"
    assert [mail.destinations["ToAddresses"] for mail in sent_mail(worker_env.aws_endpoint)] == [
        ["stuck@example.com"]
    ]


async def test_a_contact_suppressed_by_the_operator_gets_no_campaign_mail(
    deps: WorkerDeps, cli: Cli, worker_env: WorkerEnv
) -> None:
    fast = worker_env.settings(SES_MAX_SEND_RATE="2000", PUBLIC_BASE_URL="https://mail.example.com")
    async with open_deps(fast) as sending:
        tenant = await sending_tenant(sending)
        async with sending.sessionmaker() as session:
            ids = await builder(session, tenant).add(Group(3, tags=["customers"]))
            await session.commit()
            emails = sorted(
                (
                    await session.execute(
                        select(Contact.id, Contact.normalized_email).where(Contact.id.in_(ids))
                    )
                ).all(),
                key=lambda row: row[1],
            )
        (_, bounced), (_, unsubscribed), (_, kept) = emails
        organization = tenant.scope.organization.slug
        cli("contacts", "suppress", bounced, "--reason", "hard_bounce", "--organization", organization)
        cli("contacts", "suppress", unsubscribed, "--reason", "global_unsubscribe")

        async with sending.sessionmaker() as session:
            campaign = await create_campaign(
                session, tenant, "nov", sender_id="news", text_body="Hi {{ email }}"
            )
        await queue(sending, campaign.id)
        async with running(sending):
            await wait_for_status(sending, campaign.id, "sent")

    assert set(sends_by_recipient(worker_env.aws_endpoint)) == {kept}
    by_email = {row.normalized_email: row for row in await recipient_rows(deps, campaign.id)}
    assert (by_email[bounced].status, by_email[bounced].skip_reason) == ("skipped", "hard_bounce")
    assert (by_email[unsubscribed].status, by_email[unsubscribed].skip_reason) == (
        "skipped",
        "global_unsubscribe",
    )
