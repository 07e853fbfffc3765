"""The contacts-per-organization migration splits a contact that several organizations
shared into one per organization, moving each organization's rows to its own copy, and
its downgrade merges them back."""

import importlib.util
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.core.test_migrations import downgrade, fresh_database, upgrade

__all__ = ["fresh_database"]

_MIGRATION = next(Path("migrations/versions").glob("*_contacts_per_organization.py"))
_spec = importlib.util.spec_from_file_location("contacts_per_organization", _MIGRATION)
assert _spec is not None
assert _spec.loader is not None
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
BEFORE: str = _module.down_revision

SHARED_STATE = """
INSERT INTO organizations (id, slug, name) OVERRIDING SYSTEM VALUE VALUES (1, 'a', 'A'), (2, 'b', 'B');
INSERT INTO audiences (id, organization_id, slug, name) OVERRIDING SYSTEM VALUE
    VALUES (1, 1, 'n', 'N'), (2, 2, 'n', 'N');
INSERT INTO clients (id, organization_id, slug, name) OVERRIDING SYSTEM VALUE
    VALUES (1, 1, 'ca', 'CA'), (2, 2, 'cb', 'CB');
INSERT INTO contacts (id, email, normalized_email, verified_at) OVERRIDING SYSTEM VALUE
    VALUES (1, 'S@x.test', 's@x.test', now()), (2, 'lonely@x.test', 'lonely@x.test', NULL);
SELECT setval(pg_get_serial_sequence('contacts', 'id'), 2);
UPDATE contacts SET hard_bounced_at = now() WHERE id = 2;
INSERT INTO subscriptions (contact_id, audience_id, client_id, status) VALUES
    (1, 1, 1, 'subscribed'), (1, 1, NULL, 'subscribed'), (1, 2, 2, 'unsubscribed');
INSERT INTO tags (id, audience_id, slug, name) OVERRIDING SYSTEM VALUE VALUES (1, 1, 'a', 'a'), (2, 2, 'b', 'b');
INSERT INTO contact_tags (contact_id, tag_id) VALUES (1, 1), (1, 2);
INSERT INTO email_events (event_type, contact_id, client_id) VALUES ('subscribe', 1, 1), ('unsubscribe', 1, 2);
"""

OWNERS = """
SELECT 'sub' AS kind, s.client_id AS owner, c.organization_id AS org FROM subscriptions s
    JOIN contacts c ON c.id = s.contact_id WHERE s.client_id IS NOT NULL
UNION ALL SELECT 'tag', t.audience_id, c.organization_id FROM contact_tags ct
    JOIN tags t ON t.id = ct.tag_id JOIN contacts c ON c.id = ct.contact_id
UNION ALL SELECT 'event', e.client_id, c.organization_id FROM email_events e JOIN contacts c ON c.id = e.contact_id
ORDER BY 1, 2
"""


async def test_a_shared_contact_is_split_per_organization_and_merged_back(fresh_database: str) -> None:
    await upgrade(fresh_database, BEFORE)
    engine = create_async_engine(fresh_database)
    try:
        async with engine.begin() as conn:
            for statement in SHARED_STATE.strip().split(";\n"):
                await conn.execute(text(statement))
        await upgrade(fresh_database)
        async with engine.connect() as conn:
            contacts = (
                await conn.execute(
                    text(
                        "SELECT organization_id, normalized_email, verified_at IS NOT NULL FROM contacts ORDER BY 1"
                    )
                )
            ).all()
            owners = (await conn.execute(text(OWNERS))).all()
            kept = (await conn.execute(text("SELECT organization_id, reason FROM suppressions"))).all()
        # Each organization's copy keeps the shared state; each row now hangs off its own copy.
        assert contacts == [(1, "s@x.test", True), (2, "s@x.test", True)]
        assert owners == [
            ("event", 1, 1),
            ("event", 2, 2),
            ("sub", 1, 1),
            ("sub", 2, 2),
            ("tag", 1, 1),
            ("tag", 2, 2),
        ]
        # The unreferenced contact is gone, its hard bounce kept as a mailbox fact.
        assert kept == [(None, "hard_bounce")]

        await downgrade(fresh_database, BEFORE)
        async with engine.connect() as conn:
            ids = (await conn.execute(text("SELECT id FROM contacts"))).scalars().all()
            referenced = (
                (
                    await conn.execute(
                        text(
                            "SELECT DISTINCT contact_id FROM subscriptions UNION SELECT contact_id FROM contact_tags"
                        )
                    )
                )
                .scalars()
                .all()
            )
        assert ids == [1]
        assert referenced == [1]
    finally:
        await engine.dispose()
