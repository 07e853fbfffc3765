"""The tracking service as tests (and the worker tests) drive it: the real app with its
lifespan, over ASGI, and what it published to `email-events` in moto's SQS."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from asgi_lifespan import LifespanManager

from datamailer_core.aws import aws_client, aws_session
from datamailer_core.contracts import EmailEventV1, parse_message
from datamailer_core.settings import Settings
from datamailer_tracking.main import create_app

BASE = "https://mail.example.com"
IPHONE_SAFARI = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)"
    " Mobile/15E148"
)


@asynccontextmanager
async def tracking(settings: Settings, **client: str) -> AsyncIterator[httpx.AsyncClient]:
    """The tracking app started and, when the block ends, shut down (which publishes
    everything it still holds)."""
    app = create_app(settings)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app, client=(client.get("ip", "203.0.113.7"), 50000))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            yield http


async def published_events(settings: Settings) -> list[EmailEventV1]:
    """Every message on the `email-events` queue, taken off it."""
    found: list[EmailEventV1] = []
    url = settings.queues.url_for("email-events")
    assert url is not None
    async with aws_client(aws_session(settings.aws), settings.aws, "sqs") as sqs:
        while True:
            response = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            messages = response.get("Messages", [])
            if not messages:
                return found
            for message in messages:
                parsed = parse_message(message["Body"], "email-events")
                assert isinstance(parsed, EmailEventV1)
                found.append(parsed)
            await sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )
