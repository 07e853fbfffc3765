"""Building worker test scenarios: a tenant with a verified sender, queued messages
inserted the way the API inserts them, a poller run until a condition holds, and what
moto's SES received."""

import asyncio
import email
import email.policy
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from email.message import EmailMessage
from typing import Any

import httpx
from botocore.exceptions import ClientError
from sqlalchemy import select, text

from datamailer_core.contracts import QueueName, dump_message
from datamailer_core.models import EmailEvent, TransactionalMessage
from datamailer_core.repositories import contacts, deliveries, scope, transactional
from datamailer_core.senders import validate_senders
from datamailer_workers.deps import WorkerDeps
from datamailer_workers.poller import QueuePoller
from datamailer_workers.registry import HANDLERS, Handler

SENDER_ADDRESS = "support@app.example.com"
SENDER = {"id": "support", "email": f"Support Team <{SENDER_ADDRESS}>"}


@dataclass(frozen=True)
class Seeded:
    client_id: int
    client_slug: str
    audience_id: int
    organization_id: int


async def seed_client(deps: WorkerDeps, *, verify_sender: bool = True, client: str = "app") -> Seeded:
    async with deps.sessionmaker() as session, session.begin():
        found = await scope.provision(session, organization="acme", audience="newsletter", client=client)
        cleaned, default = validate_senders([SENDER], None)
        await scope.set_senders(session, found.client, cleaned, default)
    if verify_sender:
        await deps.sesv2.create_email_identity(EmailIdentity=SENDER_ADDRESS)
    return Seeded(found.client.id, found.client.slug, found.audience.id, found.organization.id)


async def insert_queued(
    deps: WorkerDeps,
    seeded: Seeded,
    *,
    to: str = "ada@example.com",
    subject: str = "Reset your password",
    html_body: str | None = "<p>Hi Ada</p>",
    text_body: str | None = "Hi Ada",
    headers: Mapping[str, str] | None = None,
    **values: Any,
) -> TransactionalMessage:
    """A committed `queued` row as the API creates it (repository `create_message`)."""
    async with deps.sessionmaker() as session, session.begin():
        contact, _ = await contacts.get_or_create_contact(session, seeded.organization_id, to)
        message = await transactional.create_message(
            session,
            client_id=seeded.client_id,
            contact_id=contact.id,
            template_key="reset",
            email=to,
            sender_id=SENDER["id"],
            from_address=SENDER["email"],
            headers=dict(headers or {}),
            subject=subject,
            html_body=html_body,
            text_body=text_body,
            status="queued",
            idempotency_key=values.pop("idempotency_key", uuid.uuid4().hex),
            **values,
        )
    assert message is not None
    return message


async def claim_and_abandon(
    deps: WorkerDeps, message: TransactionalMessage, *, lease_seconds: float, owner: str = "dead-worker"
) -> None:
    """A worker claims the row, then dies before calling SES: its lease is left behind."""
    async with deps.sessionmaker() as session, session.begin():
        claim = await deliveries.claim_transactional(
            session,
            message.id,
            client_id=message.client_id,
            idempotency_key=message.idempotency_key,
            owner=owner,
            lease_seconds=lease_seconds,
            expired_policy="resend",
        )
    assert claim.outcome == "claimed"


async def publish(deps: WorkerDeps, message: TransactionalMessage, times: int = 1) -> None:
    for _ in range(times):
        await deps.publisher.publish(deliveries.queue_message(message))


async def send_raw(deps: WorkerDeps, body: str, queue: QueueName = "transactional-email") -> None:
    await deps.sqs.send_message(QueueUrl=deps.publisher.url(queue), MessageBody=body)


async def load(deps: WorkerDeps, message_id: int) -> TransactionalMessage:
    async with deps.sessionmaker() as session:
        found = await session.get(TransactionalMessage, message_id, populate_existing=True)
    assert found is not None
    return found


async def events(deps: WorkerDeps, message_id: int) -> list[EmailEvent]:
    async with deps.sessionmaker() as session:
        rows = await session.scalars(
            select(EmailEvent)
            .where(EmailEvent.transactional_message_id == message_id)
            .order_by(EmailEvent.id)
        )
        return list(rows.all())


async def statuses(deps: WorkerDeps) -> dict[str, int]:
    async with deps.sessionmaker() as session:
        rows = await session.execute(
            text("SELECT status, count(*) FROM transactional_messages GROUP BY status")
        )
        return dict(rows.all())


async def queue_depth(deps: WorkerDeps, queue: str) -> int:
    """Visible plus in-flight messages on a queue (or a DLQ, by its name)."""
    url = (await deps.sqs.get_queue_url(QueueName=queue))["QueueUrl"]
    attributes = (
        await deps.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


async def set_queue_attributes(deps: WorkerDeps, queue: str, **attributes: str) -> None:
    url = (await deps.sqs.get_queue_url(QueueName=queue))["QueueUrl"]
    await deps.sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)


async def run_poller_until(
    deps: WorkerDeps,
    done: Callable[[], Awaitable[bool]],
    *,
    queue: QueueName = "transactional-email",
    timeout: float = 15.0,
    concurrency: int = 4,
    handlers: Mapping[str, Handler] = HANDLERS,
) -> None:
    """Run a poller in this loop until `done()` holds, then stop it gracefully."""
    stop = asyncio.Event()
    poller = QueuePoller(
        deps, queue, concurrency=concurrency, wait_seconds=1, retry_base=0.2, handlers=handlers
    )
    task = asyncio.create_task(poller.run(stop))
    try:
        async with asyncio.timeout(timeout):
            while not await done():
                if task.done():
                    task.result()
                    raise AssertionError("the poller stopped by itself")
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@dataclass(frozen=True)
class SesMail:
    id: str
    source: str
    destinations: Any
    subject: str | None
    raw: EmailMessage | None
    body: str | None


def sent_mail(aws_endpoint: str) -> list[SesMail]:
    """What moto's SES accepted (simple and raw), in order."""
    data = httpx.get(f"{aws_endpoint}/moto-api/data.json").json()
    ses = data.get("ses", {})
    found: list[SesMail] = []
    for item in ses.get("RawMessage", []):
        parsed = email.message_from_string(item["raw_data"], policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        found.append(SesMail(item["id"], item["source"], item["destinations"], None, parsed, None))
    for item in ses.get("Message", []):
        found.append(
            SesMail(item["id"], item["source"], item["destinations"], item["subject"], None, item["body"])
        )
    return found


class FailingSes:
    """Wraps the real sesv2 client: the first `times` sends raise `code`."""

    def __init__(self, real: Any, code: str, times: int, status: int = 400) -> None:
        self.real, self.code, self.times, self.status = real, code, times, status
        self.failures = 0

    def _fail(self, operation: str) -> None:
        if self.failures < self.times:
            self.failures += 1
            response: Any = {
                "Error": {"Code": self.code, "Message": "Maximum sending rate exceeded."},
                "ResponseMetadata": {"HTTPStatusCode": self.status},
            }
            raise ClientError(response, operation)

    async def send_email(self, **request: Any) -> Any:
        self._fail("SendEmail")
        return await self.real.send_email(**request)

    async def send_bulk_email(self, **request: Any) -> Any:
        self._fail("SendBulkEmail")
        return await self.real.send_bulk_email(**request)


def with_ses(deps: WorkerDeps, sesv2: Any) -> WorkerDeps:
    return replace(deps, sesv2=sesv2)


def body_of(message: TransactionalMessage) -> str:
    return dump_message(deliveries.queue_message(message))
