"""Operator actions shared by the commands and by `datamailer up`. Each is safe to run twice."""

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.aws import aws_client, aws_session
from datamailer_core.contracts import DLQ_SUFFIX, QUEUE_NAMES
from datamailer_core.db.engine import create_engine, create_sessionmaker
from datamailer_core.errors import NotFound, ValidationFailed
from datamailer_core.models import Contact, Organization
from datamailer_core.repositories import scope, webhooks
from datamailer_core.repositories.audience_queries import erase_contact
from datamailer_core.repositories.contacts import (
    MANUAL_SUPPRESSIONS,
    clean_email,
    normalize_email,
    suppress_address,
)
from datamailer_core.security import IssuedKey
from datamailer_core.senders import IdentityCheck, check_identity, validate_senders
from datamailer_core.settings import Settings
from datamailer_workers.deps import open_deps
from datamailer_workers.scheduler import requeue_lost_transactional

if TYPE_CHECKING:
    from alembic.config import Config

REPO_ROOT = Path(__file__).resolve().parents[2]
QUEUE_ENV = {
    "transactional-email": "SQS_TRANSACTIONAL_EMAIL_QUEUE_URL",
    "campaign-email": "SQS_CAMPAIGN_EMAIL_QUEUE_URL",
    "ses-webhooks": "SQS_SES_WEBHOOKS_QUEUE_URL",
    "email-events": "SQS_EMAIL_EVENTS_QUEUE_URL",
}
VISIBILITY_TIMEOUT_SECONDS = 60
REQUEUE_MAX_BATCHES = 1000


def alembic_config(database_url: str) -> "Config":
    from alembic.config import Config  # alembic is imported by the commands that migrate only

    ini = Path("alembic.ini") if Path("alembic.ini").exists() else REPO_ROOT / "alembic.ini"
    cfg = Config(str(ini))
    cfg.set_main_option("script_location", str(ini.parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))  # ini interpolation
    return cfg


def migrate(settings: Settings, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(settings.database.url), revision)


@asynccontextmanager
async def session_scope(settings: Settings) -> AsyncIterator[AsyncSession]:
    """One short unit of work: commits on success, rolls back on error."""
    engine = create_engine(settings.database, null_pool=True)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            yield session
    finally:
        await engine.dispose()


async def create_queues(settings: Settings) -> dict[str, str]:
    """The four queues and their DLQs with redrive; returns queue name → URL."""
    urls: dict[str, str] = {}
    async with aws_client(aws_session(settings.aws), settings.aws, "sqs") as sqs:
        for name in QUEUE_NAMES:
            dlq_url = (await sqs.create_queue(QueueName=name + DLQ_SUFFIX))["QueueUrl"]
            attrs = await sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
            redrive = {
                "deadLetterTargetArn": attrs["Attributes"]["QueueArn"],
                "maxReceiveCount": str(settings.queues.max_receive_count),
            }
            url = (await sqs.create_queue(QueueName=name))["QueueUrl"]
            await sqs.set_queue_attributes(
                QueueUrl=url,
                Attributes={
                    "RedrivePolicy": json.dumps(redrive),
                    "VisibilityTimeout": str(VISIBILITY_TIMEOUT_SECONDS),
                    "ReceiveMessageWaitTimeSeconds": "20",
                },
            )
            urls[name] = url
    return urls


async def verify_sender_identities(settings: Settings, addresses: list[str]) -> None:
    """Local mode only: mark sender addresses verified in the local SES."""
    async with aws_client(aws_session(settings.aws), settings.aws, "ses") as ses:
        for address in addresses:
            await ses.verify_email_identity(EmailAddress=address)


async def check_sender_identities(settings: Settings, senders: list[dict[str, str]]) -> list[IdentityCheck]:
    """What SES says about each sender's address (`GetEmailIdentity`); errors are reported."""
    async with aws_client(aws_session(settings.aws), settings.aws, "sesv2") as sesv2:
        return [await check_identity(sesv2, sender) for sender in senders]


async def provision(settings: Settings, organization: str, audience: str, client: str) -> scope.Scope:
    async with session_scope(settings) as session:
        return await scope.provision(session, organization=organization, audience=audience, client=client)


async def set_senders(
    settings: Settings,
    client: str,
    senders: list[dict[str, str]],
    default: str | None,
    organization: str | None,
) -> tuple[list[dict[str, str]], str | None]:
    cleaned, default = validate_senders(senders, default)
    async with session_scope(settings) as session:
        found = await scope.get_client_by_slug(session, client, organization)
        await scope.set_senders(session, found, cleaned, default)
    return cleaned, default


async def seed_senders(
    settings: Settings, client: str, senders: list[dict[str, str]], default: str | None
) -> list[dict[str, str]]:
    """Set `senders` only on a client that has none yet; returns the client's senders,
    so a re-seed keeps what a client (or an operator) configured since."""
    async with session_scope(settings) as session:
        found = await scope.get_client_by_slug(session, client)
        if found.sender_emails:
            return [{"id": str(s["id"]), "email": str(s["email"])} for s in found.sender_emails]
    cleaned, _ = await set_senders(settings, client, senders, default, None)
    return cleaned


async def create_key(
    settings: Settings, client: str, name: str, organization: str | None = None, notes: str | None = None
) -> IssuedKey:
    async with session_scope(settings) as session:
        found = await scope.get_client_by_slug(session, client, organization)
        _, issued = await scope.create_key(
            session, found, name, settings.security.secret_key.get_secret_value(), notes
        )
    return issued


async def list_keys(settings: Settings, client: str | None) -> list[dict[str, str]]:
    async with session_scope(settings) as session:
        found = await scope.get_client_by_slug(session, client) if client else None
        rows = await scope.list_keys(session, found)
        return [
            {
                "key": f"dm_{k.public_id}",
                "client": c.slug,
                "name": k.name,
                "created_at": k.created_at.isoformat(timespec="seconds"),
                "last_used_at": k.last_used_at.isoformat(timespec="seconds") if k.last_used_at else "-",
                "revoked_at": k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "-",
            }
            for k, c in rows
        ]


async def revoke_key(settings: Settings, public_id: str) -> None:
    async with session_scope(settings) as session:
        await scope.revoke_key(session, public_id)


async def erase_address(settings: Settings, email: str, organization: str | None = None) -> list[str]:
    """Erase an address in every organization (or one): the full erasure a client's own
    `POST /api/contacts/erase`, which reaches its organization only, cannot do. Returns
    the organizations erased; running it again finds nothing and erases nothing."""
    async with session_scope(settings) as session:
        stmt = (
            select(Contact, Organization.slug)
            .join(Organization, Organization.id == Contact.organization_id)
            .where(Contact.normalized_email == normalize_email(email))
            .order_by(Organization.slug)
        )
        if organization is not None:
            if await session.scalar(select(Organization.id).where(Organization.slug == organization)) is None:
                raise NotFound(f"organization {organization!r} not found")
            stmt = stmt.where(Organization.slug == organization)
        found = (await session.execute(stmt)).all()
        for contact, _ in found:
            await erase_contact(session, contact)
        return [slug for _, slug in found]


async def set_webhooks_enabled(
    settings: Settings, client: str, enabled: bool, url: str | None = None, organization: str | None = None
) -> list[tuple[str, bool]]:
    """Enable or disable a client's webhook endpoints (or one); (url, changed) each."""
    async with session_scope(settings) as session:
        found = await scope.get_client_by_slug(session, client, organization)
        return await webhooks.set_endpoints_status(session, found.id, enabled=enabled, url=url)


async def suppress(
    settings: Settings, email: str, reason: str, organization: str | None = None
) -> tuple[str, list[int]]:
    """Manual suppression of an address in one organization, or in every organization
    (contacts created later included). Returns the normalized address and the contacts
    that changed; a second run changes none."""
    cleaned = clean_email(email)
    if cleaned is None:
        raise ValidationFailed(f"not a valid email address: {email!r}", fields={"email": "invalid"})
    if reason not in MANUAL_SUPPRESSIONS:
        raise ValidationFailed(
            f"unknown reason {reason!r}; one of {', '.join(MANUAL_SUPPRESSIONS)}",
            fields={"reason": "invalid"},
        )
    normalized = normalize_email(cleaned)
    async with session_scope(settings) as session:
        organization_id = None
        if organization is not None:
            organization_id = await session.scalar(
                select(Organization.id).where(Organization.slug == organization)
            )
            if organization_id is None:
                raise NotFound(f"organization {organization!r} not found")
        changed = await suppress_address(session, normalized, reason, organization_id=organization_id)
    return normalized, changed


async def requeue_stale_transactional(settings: Settings, older_than: float | None = None) -> int:
    """The scheduler's re-enqueue of `queued` transactional rows, on demand, until none
    older than the threshold is left (a re-enqueued row is touched, so it is not taken
    twice; the batch cap only bounds a threshold shorter than the run itself)."""
    async with open_deps(settings) as deps:
        return await requeue_lost_transactional(deps, older_than=older_than, max_batches=REQUEUE_MAX_BATCHES)
