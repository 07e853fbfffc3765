"""Building campaign scenarios: audiences of any size written with set-based inserts
(one statement per table per group, `generate_series` for the addresses), campaigns
through the repository, and a recording publisher for the enqueue feed."""

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from httpx import AsyncClient, Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.contracts import CampaignEmailV1, QueueMessage
from datamailer_core.models import Campaign
from datamailer_core.repositories import campaigns, scope
from tests.factories import Tenant

CAMPAIGNS = "/api/campaigns"


def campaign_body(tenant: Tenant, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "audience": tenant.audience_slug,
        "client": tenant.client_slug,
        "subject": "News for {{ email }}",
        "html_body": '<p>Hi {{ email }}</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>',
        "text_body": "Hi {{ email }}\nUnsubscribe: {{ unsubscribe_url }}",
    }
    body.update(overrides)
    return body


async def put_campaign(api: AsyncClient, tenant: Tenant, key: str = "nov", **overrides: Any) -> Response:
    response = await api.put(
        f"{CAMPAIGNS}/{key}", json=campaign_body(tenant, **overrides), headers=tenant.headers
    )
    assert response.status_code in (200, 201), response.text
    return response


@dataclass(frozen=True)
class Group:
    """`count` contacts in one state. `client_status` / `audience_status` None: no
    subscription row at that level. `verified_at`: "contact", "client", "audience" or
    None (nowhere). `category_off`: (tag, "client" | "audience") disabled preferences."""

    count: int
    client_status: str | None = "subscribed"
    audience_status: str | None = None
    verified_at: str | None = "contact"
    hard_bounced: bool = False
    complained: bool = False
    global_unsubscribed: bool = False
    validation_status: str = "valid"
    tags: Sequence[str] = ()
    category_off: Sequence[tuple[str, str]] = ()
    category_on: Sequence[str] = ()


@dataclass
class AudienceBuilder:
    """Adds groups of contacts to a tenant's audience, straight into the tables."""

    session: AsyncSession
    audience_id: int
    client_id: int
    created: list[int] = field(default_factory=list)

    async def add(self, group: Group, *, client_id: int | None = None) -> list[int]:
        prefix = f"c{secrets.token_hex(4)}"
        ids = list(
            (
                await self.session.execute(
                    text(
                        """
                        INSERT INTO contacts (organization_id, email, normalized_email, verified_at,
                                              hard_bounced_at, complained_at, global_unsubscribed_at,
                                              validation_status)
                        SELECT (SELECT organization_id FROM audiences WHERE id = CAST(:audience_id AS bigint)),
                               CAST(:prefix AS text) || '-' || g || '@Example.com',
                               CAST(:prefix AS text) || '-' || g || '@example.com',
                               CASE WHEN :contact_verified THEN now() END,
                               CASE WHEN :hard_bounced THEN now() END,
                               CASE WHEN :complained THEN now() END,
                               CASE WHEN :global_unsubscribed THEN now() END,
                               CAST(:validation_status AS text)
                        FROM generate_series(1, CAST(:count AS integer)) g
                        ORDER BY g
                        RETURNING id
                        """
                    ),
                    {
                        "prefix": prefix,
                        "audience_id": self.audience_id,
                        "count": group.count,
                        "contact_verified": group.verified_at == "contact",
                        "hard_bounced": group.hard_bounced,
                        "complained": group.complained,
                        "global_unsubscribed": group.global_unsubscribed,
                        "validation_status": group.validation_status,
                    },
                )
            ).scalars()
        )
        subscriptions = [
            (client_id or self.client_id, group.client_status, group.verified_at == "client"),
            (None, group.audience_status, group.verified_at == "audience"),
        ]
        for sub_client, status, verified in subscriptions:
            if status is None:
                continue
            await self.session.execute(
                text(
                    """
                    INSERT INTO subscriptions (contact_id, audience_id, client_id, status, verified_at,
                                               unsubscribed_at)
                    SELECT id, CAST(:audience_id AS bigint), CAST(:client_id AS bigint), CAST(:status AS text),
                           CASE WHEN :verified THEN now() END,
                           CASE WHEN CAST(:status AS text) = 'unsubscribed' THEN now() END
                    FROM unnest(CAST(:ids AS bigint[])) AS id
                    """
                ),
                {
                    "ids": ids,
                    "audience_id": self.audience_id,
                    "client_id": sub_client,
                    "status": status,
                    "verified": verified,
                },
            )
        await self.tag(ids, group.tags)
        for tag, level in group.category_off:
            await self._preference(ids, tag, level, enabled=False)
        for tag in group.category_on:
            await self._preference(ids, tag, "client", enabled=True)
        self.created.extend(ids)
        return ids

    async def tag(self, ids: list[int], slugs: Sequence[str]) -> None:
        if not slugs:
            return
        await self.session.execute(
            text(
                """
                INSERT INTO tags (audience_id, slug, name)
                SELECT CAST(:audience_id AS bigint), s, s FROM unnest(CAST(:slugs AS text[])) AS s
                ON CONFLICT (audience_id, slug) DO NOTHING
                """
            ),
            {"audience_id": self.audience_id, "slugs": list(slugs)},
        )
        await self.session.execute(
            text(
                """
                INSERT INTO contact_tags (contact_id, tag_id)
                SELECT c, t.id FROM unnest(CAST(:ids AS bigint[])) AS c
                JOIN tags t ON t.audience_id = :audience_id AND t.slug = ANY(CAST(:slugs AS text[]))
                ON CONFLICT DO NOTHING
                """
            ),
            {"ids": ids, "audience_id": self.audience_id, "slugs": list(slugs)},
        )

    async def _preference(self, ids: list[int], tag: str, level: str, *, enabled: bool) -> None:
        await self.session.execute(
            text(
                """
                INSERT INTO category_preferences (contact_id, audience_id, client_id, tag, enabled)
                SELECT c, CAST(:audience_id AS bigint), CAST(:client_id AS bigint), CAST(:tag AS text),
                       CAST(:enabled AS boolean)
                FROM unnest(CAST(:ids AS bigint[])) AS c
                """
            ),
            {
                "ids": ids,
                "audience_id": self.audience_id,
                "client_id": self.client_id if level == "client" else None,
                "tag": tag,
                "enabled": enabled,
            },
        )


def builder(session: AsyncSession, tenant: Tenant) -> AudienceBuilder:
    return AudienceBuilder(session, tenant.scope.audience.id, tenant.scope.client.id)


async def create_campaign(
    session: AsyncSession, tenant: Tenant, key: str = "nov", *, status: str | None = None, **values: Any
) -> Campaign:
    """A committed draft (or a campaign forced into `status`), through the repository."""
    definition: dict[str, Any] = {
        "audience_id": tenant.scope.audience.id,
        "subject": "News",
        "html_body": "<p>Hi {{ email }}</p>",
        "text_body": None,
        "include_tags": [],
        "exclude_tags": [],
        **values,
    }
    campaign, _ = await campaigns.upsert_campaign(session, tenant.scope.client.id, key, definition)
    if status is not None:
        await session.execute(
            text("UPDATE campaigns SET status = :s WHERE id = :id"), {"s": status, "id": campaign.id}
        )
    await session.commit()
    found = await campaigns.get_campaign_by_id(session, campaign.id)
    assert found is not None
    return found


async def recipient_states(session: AsyncSession, campaign_id: int) -> dict[int, tuple[str, str | None]]:
    rows = await session.execute(
        text("SELECT contact_id, status, skip_reason FROM campaign_recipients WHERE campaign_id = :id"),
        {"id": campaign_id},
    )
    return {row.contact_id: (row.status, row.skip_reason) for row in rows}


async def set_recipient_status(
    session: AsyncSession, campaign_id: int, status: str, ids: Sequence[int] | None = None, **values: Any
) -> None:
    """Stand in for the send handler: move recipients (all, or `ids`) to `status`."""
    assignments = "".join(f", {column} = :{column}" for column in values)
    where = "" if ids is None else " AND id = ANY(CAST(:ids AS bigint[]))"
    await session.execute(
        text(f"UPDATE campaign_recipients SET status = :status{assignments} WHERE campaign_id = :cid{where}"),
        {"status": status, "cid": campaign_id, "ids": list(ids or []), **values},
    )
    await session.commit()


class RecordingPublisher:
    """Stands in for `QueuePublisher`: keeps what would have been sent; can fail."""

    def __init__(self, fail: bool = False) -> None:
        self.messages: list[CampaignEmailV1] = []
        self.fail = fail

    async def publish_batch(self, messages: Sequence[QueueMessage]) -> None:
        if self.fail:
            raise ConnectionError("SQS unreachable")
        for message in messages:
            assert isinstance(message, CampaignEmailV1)
            self.messages.append(message)

    @property
    def recipient_ids(self) -> list[int]:
        return [rid for message in self.messages for rid in message.campaign_recipient_ids]


async def another_client(session: AsyncSession, tenant: Tenant, slug: str = "other") -> int:
    """A second client of the tenant's organization (same audience), without a key."""
    found = await scope.provision(
        session, organization=tenant.scope.organization.slug, audience=tenant.audience_slug, client=slug
    )
    await session.commit()
    return found.client.id
