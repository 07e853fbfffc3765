"""Helpers for the transactional API tests: templates, sends and the moto queue."""

from typing import Any

from httpx import AsyncClient, Response

from datamailer_core.contracts import TransactionalEmailV1, parse_message
from tests.factories import Tenant

TEMPLATES = "/api/transactional/templates"
SEND = "/api/transactional/send"
MESSAGES = "/api/transactional/messages"


def template_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Password reset",
        "subject": "Reset your password, {{ first_name|default:'there' }}",
        "html_body": '<p>Hi {{ first_name }},</p><p><a href="{{ reset_url }}">Reset</a></p>',
        "text_body": "Hi {{ first_name }},\nReset: {{ reset_url }}",
        "required_context": ["reset_url"],
        "example_context": {"first_name": "Ada", "reset_url": "https://example.com/r/1"},
    }
    body.update(overrides)
    return body


async def put_template(api: AsyncClient, tenant: Tenant, key: str = "reset", **overrides: Any) -> Response:
    response = await api.put(f"{TEMPLATES}/{key}", json=template_body(**overrides), headers=tenant.headers)
    assert response.status_code in (200, 201), response.text
    return response


def send_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "email": "ada@example.com",
        "template_key": "reset",
        "context": {"first_name": "Ada", "reset_url": "https://example.com/r/1"},
    }
    body.update(overrides)
    return body


async def send(api: AsyncClient, tenant: Tenant, **overrides: Any) -> Response:
    return await api.post(SEND, json=send_body(**overrides), headers=tenant.headers)


async def queued_messages(sqs: Any, queue_url: str) -> list[TransactionalEmailV1]:
    """Every message on the queue, parsed (they stay invisible for a while afterwards)."""
    found: list[TransactionalEmailV1] = []
    while True:
        response = await sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=30
        )
        batch = response.get("Messages", [])
        if not batch:
            return found
        for message in batch:
            parsed = parse_message(message["Body"], "transactional-email")
            assert isinstance(parsed, TransactionalEmailV1)
            found.append(parsed)
