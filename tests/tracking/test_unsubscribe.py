"""The unsubscribe page and its POST: each scope is honoured by the next campaign
snapshot (with its skip reason) and by transactional mail of the category; one-click
works with the body curl sends; a second submit changes nothing."""

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from datamailer_core.models import Campaign, EmailEvent
from datamailer_core.security import hash_token, new_token
from tests.api.campaign_factories import create_campaign
from tests.api.transactional_factories import put_template, send
from tests.factories import Tenant, TenantFactory
from tests.tracking.unsubscribe_helpers import SECRET, recipients, sent_campaign, snapshot

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def tenant(tenants: TenantFactory) -> Tenant:
    return await tenants.create()


async def event_count(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(EmailEvent)) or 0)


async def campaign_unsubscribes(session: AsyncSession, campaign_id: int) -> int:
    found = await session.scalar(
        select(Campaign.unsubscribe_count)
        .where(Campaign.id == campaign_id)
        .execution_options(populate_existing=True)
    )
    return int(found or 0)


async def test_the_page_names_the_client_masks_the_address_and_escapes_what_it_shows(
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant: Tenant,
    pages: httpx.AsyncClient,
) -> None:
    await session.execute(
        text("UPDATE clients SET name = '<b>Acme</b> & Co' WHERE id = :id"), {"id": tenant.scope.client.id}
    )
    sent = await sent_campaign(session, sessionmaker, tenant, "nov", category_tag="<i>news</i>")
    [(contact_id, token)] = sent.tokens.items()
    email = await session.scalar(text("SELECT email FROM contacts WHERE id = :id"), {"id": contact_id})

    response = await pages.get(f"/unsubscribe/{token}")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert "&lt;b&gt;Acme&lt;/b&gt; &amp; Co" in page
    assert "<b>Acme</b>" not in page
    assert "&lt;i&gt;news&lt;/i&gt;" in page
    assert "<i>news</i>" not in page
    assert email not in page
    local, domain = email.split("@")
    assert f"{local[0]}{'*' * (len(local) - 2)}{local[-1]}@{domain}" in page
    for control in ("scope-client", "scope-audience", "scope-global", "category-1"):
        assert f'id="{control}"' in page
        assert f'for="{control}"' in page
    assert "<script" not in page


async def test_an_unknown_token_is_a_404_page_and_changes_nothing(
    session: AsyncSession, pages: httpx.AsyncClient
) -> None:
    before = await event_count(session)
    for token in (new_token(), "x", "a" * 300):
        assert (await pages.get(f"/unsubscribe/{token}")).status_code == 404
        posted = await pages.post(f"/unsubscribe/{token}", data={"scope": "global"})
        assert posted.status_code == 404
        assert "Nothing was changed" in posted.text
        one_click = await pages.post(
            f"/unsubscribe/{token}", content=b"List-Unsubscribe=One-Click", headers=FORM
        )
        assert one_click.status_code == 404
    assert await event_count(session) == before


CHOICES: dict[str, tuple[dict[str, Any], str]] = {
    "client": ({"scope": "client"}, "client_unsubscribe"),
    "audience": ({"scope": "audience"}, "audience_unsubscribe"),
    "everything": ({"scope": "global"}, "global_unsubscribe"),
    "one category": ({"scope": "none", "category": ["news"]}, "category_unsubscribe"),
}


@pytest.mark.parametrize("choice", CHOICES)
async def test_each_choice_is_honoured_by_the_next_campaign_snapshot_and_counted_once(
    choice: str,
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant: Tenant,
    pages: httpx.AsyncClient,
) -> None:
    form, reason = CHOICES[choice]
    sent = await sent_campaign(session, sessionmaker, tenant, "nov", count=2)
    leaving, staying = sent.contact_ids

    response = await pages.post(f"/unsubscribe/{sent.tokens[leaving]}", data=form)
    assert response.status_code == 200, response.text
    assert "Your choice is saved" in response.text
    events = await event_count(session)
    again = await pages.post(f"/unsubscribe/{sent.tokens[leaving]}", data=form)
    assert again.status_code == 200
    assert await event_count(session) == events  # the second submit changed nothing

    assert (await recipients(session, sent.campaign_id))[leaving] == ("unsubscribed", None)
    assert (await recipients(session, sent.campaign_id))[staying] == ("sent", None)
    assert await campaign_unsubscribes(session, sent.campaign_id) == 1
    unsubscribe_events = (
        (
            await session.execute(
                text(
                    "SELECT metadata->>'scope' FROM email_events WHERE contact_id = :id AND event_type = 'unsubscribe'"
                ),
                {"id": leaving},
            )
        )
        .scalars()
        .all()
    )
    assert len(unsubscribe_events) == 1

    follow_up = await create_campaign(session, tenant, "dec", category_tag="news")
    await snapshot(sessionmaker, follow_up.id)
    states = await recipients(session, follow_up.id)
    assert states[leaving] == ("skipped", reason)
    assert states[staying] == ("pending", None)


async def test_one_click_with_the_body_curl_sends_unsubscribes_from_the_client_without_a_page(
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant: Tenant,
    pages: httpx.AsyncClient,
) -> None:
    sent = await sent_campaign(session, sessionmaker, tenant, "nov")
    [(contact_id, token)] = sent.tokens.items()

    # What `curl -X POST -d List-Unsubscribe=One-Click URL` sends: no cookie, no CSRF token.
    response = await pages.post(f"/unsubscribe/{token}", content=b"List-Unsubscribe=One-Click", headers=FORM)
    assert response.status_code == 200
    assert len(response.content) < 64
    assert "set-cookie" not in response.headers
    repeat = await pages.post(f"/unsubscribe/{token}", content=b"List-Unsubscribe=One-Click", headers=FORM)
    assert repeat.status_code == 200

    assert await campaign_unsubscribes(session, sent.campaign_id) == 1
    status = await session.scalar(
        text("SELECT status FROM subscriptions WHERE contact_id = :id AND client_id = :c"),
        {"id": contact_id, "c": tenant.scope.client.id},
    )
    assert status == "unsubscribed"
    follow_up = await create_campaign(session, tenant, "dec")
    await snapshot(sessionmaker, follow_up.id)
    assert (await recipients(session, follow_up.id))[contact_id] == ("skipped", "client_unsubscribe")


async def test_a_transactional_messages_link_turns_its_category_off_for_that_client(
    session: AsyncSession, tenant: Tenant, pages: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    await put_template(api, tenant)
    scope = {"audience": tenant.audience_slug, "client": tenant.client_slug}
    first = await send(api, tenant, category_tag="receipts", **scope)
    assert first.status_code == 202, first.text
    token = new_token()
    await session.execute(
        text("UPDATE transactional_messages SET unsubscribe_token_hash = :h WHERE id = :id"),
        {"h": hash_token(SECRET, token), "id": first.json()["message"]["id"]},
    )
    await session.commit()

    page = await pages.get(f"/unsubscribe/{token}")
    assert page.status_code == 200
    assert "receipts" in page.text
    one_click = await pages.post(f"/unsubscribe/{token}", content=b"List-Unsubscribe=One-Click", headers=FORM)
    assert one_click.status_code == 200

    blocked = await send(api, tenant, category_tag="receipts", **scope)
    assert blocked.status_code == 409
    assert blocked.json()["error"]["reason"] == "category_unsubscribe"
    other_category = await send(api, tenant, category_tag="security", **scope)
    assert other_category.status_code == 202
    without_category = await send(api, tenant)
    assert without_category.status_code == 202
