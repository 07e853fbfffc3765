"""`datamailer contacts erase`: the operator's full erasure across organizations (a
client's own erase reaches its organization only); safe to run twice."""

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from typer.testing import CliRunner

from datamailer_core.repositories.audience import ContactInput, apply_contacts
from datamailer_server.main import app
from tests.cli.test_campaign_commands import database, invoke
from tests.conftest import run_sync
from tests.factories import TenantFactory

__all__ = ["database"]


async def _two_organizations_know(url: str, email: str) -> None:
    engine = create_async_engine(url)
    try:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            for organization in ("org-a", "org-b"):
                tenant = await TenantFactory(session, "cli-test-secret").create(organization=organization)
                item = ContactInput(
                    email=email, normalized=email.lower(), status="subscribed", global_unsubscribed=True
                )
                await apply_contacts(
                    session,
                    audience_id=tenant.scope.audience.id,
                    client_id=tenant.scope.client.id,
                    items=[item],
                )
            await session.commit()
    finally:
        await engine.dispose()


async def _counts(url: str) -> tuple[int, int, int]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            contacts = await conn.scalar(text("SELECT count(*) FROM contacts"))
            subscriptions = await conn.scalar(text("SELECT count(*) FROM subscriptions"))
            suppressions = await conn.scalar(text("SELECT count(*) FROM suppressions"))
            return int(contacts or 0), int(subscriptions or 0), int(suppressions or 0)
    finally:
        await engine.dispose()


def test_erase_reaches_every_organization_or_the_one_named(database: str) -> None:
    run_sync(_two_organizations_know(database, "gone@example.com"))
    assert run_sync(_counts(database)) == (2, 4, 0)

    assert invoke("contacts", "erase", "Gone@Example.com", "--organization", "org-b").strip() == (
        "erased in 1 organizations: org-b"
    )
    assert run_sync(_counts(database)) == (1, 2, 1)
    assert invoke("contacts", "erase", "gone@example.com").strip() == "erased in 1 organizations: org-a"
    # Each organization keeps its own hash of the unsubscribed address.
    assert run_sync(_counts(database)) == (0, 0, 2)
    assert invoke("contacts", "erase", "gone@example.com").strip() == "erased in 0 organizations"


def test_erase_names_an_unknown_organization_in_one_line(database: str) -> None:
    result = CliRunner().invoke(app, ["contacts", "erase", "x@example.com", "--organization", "nobody"])
    assert result.exit_code != 0
    assert result.output.strip().count("\n") == 0
    assert "nobody" in result.output


@pytest.mark.parametrize("args", [["contacts"], ["contacts", "erase"]])
def test_contacts_commands_need_their_arguments(args: list[str]) -> None:
    assert CliRunner().invoke(app, args).exit_code != 0
