"""Campaigns through SES v2 `SendBulkEmail` (tests/ses_bulk.py renders what it receives
as SES does): the same messages as the per-recipient path, per-entry statuses mapped to
their recipients, and the per-recipient fallback."""

from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote

from datamailer_core.campaigns.bulk import plan_send
from datamailer_core.campaigns.message import (
    CampaignContent,
    build_recipient_message,
    campaign_content,
    click_target_is_genuine,
    render_recipient_message,
)
from datamailer_core.mail import OutgoingEmail, sender_mailbox
from datamailer_core.models import Campaign
from datamailer_core.repositories import campaign_sends
from datamailer_core.security import hash_token
from datamailer_workers.deps import WorkerDeps, open_deps
from tests.api.campaign_factories import Group
from tests.factories import Tenant
from tests.ses_bulk import BulkEndpoint
from tests.workers.campaign_helpers import (
    counters_and_recount,
    queue,
    raw_messages,
    recipient_rows,
    running,
    sending_tenant,
    sends_by_recipient,
    wait_for_status,
)
from tests.workers.conftest import WorkerEnv
from tests.workers.test_campaign_sending import (
    BASE,
    SECRET,
    add_groups,
    fast,
    new_campaign,
    snapshotted,
    tenant,
)

__all__ = ["fast", "tenant"]  # the fixtures, shared with the per-recipient tests


HTML = """<html><body>
<p>Hello {{ email }} &amp; welcome</p>
{% for item in ["a", "b"] %}<i>{{ item }}</i>{% endfor %}
<a href="https://example.com/news?a=1&amp;b=2">News</a>
<a class="x" href='http://example.org/plain'>Plain</a>
<a href="https://example.com/news?a=1&amp;b=2">News again</a>
<a href="mailto:help@example.com">Mail us</a>
<a href="{{ preferences_url }}">Preferences</a>
</body></html>"""
TEXT = "Hello {{ email }}\nRead https://example.com/text-link.\nManage: {{ unsubscribe_url }}\n"


async def content_of(deps: WorkerDeps, campaign: Campaign) -> CampaignContent:
    async with deps.sessionmaker() as session:
        found = await campaign_sends.load_sending_campaign(session, campaign.id)
    assert found is not None
    return campaign_content(found.campaign, found.client, deps.settings)


def tokens_of(message: EmailMessage) -> tuple[str, str]:
    html = message.get_body(("html",))
    assert html is not None
    tracking = html.get_content().split(f'<img src="{BASE}/t/o/', 1)[1].split(".gif", 1)[0]
    unsubscribe = message["List-Unsubscribe"].split(",")[0].strip("<> ").rsplit("/", 1)[1]
    return tracking, unsubscribe


def body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body((subtype,))
    assert part is not None
    return str(part.get_content())


async def test_the_bulk_path_sends_each_recipient_what_the_per_recipient_path_would(
    fast: WorkerDeps, tenant: Tenant, aws_endpoint: str, ses_bulk: BulkEndpoint
) -> None:
    await add_groups(fast, tenant, {"all": Group(60)})  # two SendBulkEmail calls
    campaign = await new_campaign(
        fast, tenant, subject="News for {{ email }}", html_body=HTML, text_body=TEXT
    )
    content = await content_of(fast, campaign)
    plan = plan_send(content)
    assert plan.mode == "bulk"
    assert plan.template is not None
    assert len(plan.template.links) == 3  # distinct links, each with its own signature
    await queue_and_send(fast, campaign)

    sizes = [len(r["BulkEmailEntries"]) for r in ses_bulk.requests]
    assert sum(sizes) == 60
    assert max(sizes) <= 50
    messages = raw_messages(aws_endpoint)
    assert len(messages) == 60 == len(ses_bulk.messages)  # nothing through SendEmail
    rows = {row.email: row for row in await recipient_rows(fast, campaign.id)}
    sender = sender_mailbox(OutgoingEmail(content.from_address, (), "", display_name=content.display_name))
    for message, record in zip(messages, ses_bulk.messages, strict=True):
        row = rows[message["To"]]
        tracking, unsubscribe = tokens_of(message)
        assert row.tracking_token_hash == hash_token(SECRET, tracking)
        assert row.unsubscribe_token_hash == hash_token(SECRET, unsubscribe)
        assert row.ses_message_id == record.message_id
        expected = render_recipient_message(
            content, email=row.email, tracking_token=tracking, unsubscribe_token=unsubscribe
        )
        assert record.source == sender
        assert message["From"] == "Acme News <news@app.example.com>"
        assert record.subject == expected.subject == f"News for {row.email}"
        assert record.html == expected.html_body
        assert record.text == expected.text_body
        assert record.headers == dict(expected.headers)
        assert record.tags == {"campaign_id": str(campaign.id), "client": tenant.client_slug}
        # The preview and the test-send build exactly this message.
        preview = build_recipient_message(
            content, email=row.email, tracking_token=tracking, unsubscribe_token=unsubscribe
        )
        assert (preview.subject, preview.html_body, preview.text_body, dict(preview.headers)) == (
            record.subject, record.html, record.text, record.headers
        )  # fmt: skip
    link = body(messages[0], "html").split('href="', 2)[2].split('"')[0].replace("&amp;", "&")
    token, query = link.split("/t/c/", 1)[1].split("?", 1)
    url, signature = (part.split("=", 1)[1] for part in query.split("&"))
    assert click_target_is_genuine(SECRET, token, unquote(url), signature)
    assert not click_target_is_genuine(SECRET, token, "https://evil.example.net/", signature)
    other_token = tokens_of(messages[1])[0]
    assert not click_target_is_genuine(SECRET, other_token, unquote(url), signature)


async def queue_and_send(deps: WorkerDeps, campaign: Campaign) -> None:
    await queue(deps, campaign.id)
    async with running(deps):
        await wait_for_status(deps, campaign.id, "sent")


async def test_a_rejected_and_a_throttled_entry_are_handled_and_the_others_sent_once(
    fast: WorkerDeps, tenant: Tenant, aws_endpoint: str, ses_bulk: BulkEndpoint
) -> None:
    campaign, _ = await snapshotted(fast, tenant, 6)
    emails = [row.email for row in await recipient_rows(fast, campaign.id)]
    rejected, throttled = emails[1], emails[4]
    ses_bulk.answer(rejected, "MESSAGE_REJECTED")
    ses_bulk.answer(throttled, "ACCOUNT_THROTTLED")
    async with running(fast):
        await wait_for_status(fast, campaign.id, "sent")

    rows = {row.email: row for row in await recipient_rows(fast, campaign.id)}
    assert (rows[rejected].status, rows[rejected].skip_reason) == ("failed", "MESSAGE_REJECTED")
    assert rows[rejected].ses_message_id is None
    assert all(rows[e].status == "sent" and rows[e].ses_message_id for e in emails if e != rejected)
    assert rows[throttled].attempt_count == 2
    sends = sends_by_recipient(aws_endpoint)
    assert set(sends) == {e.lower() for e in emails} - {rejected.lower()}
    assert set(sends.values()) == {1}
    destinations = [
        [entry["Destination"]["ToAddresses"][0] for entry in request["BulkEmailEntries"]]
        for request in ses_bulk.requests
    ]
    assert destinations == [emails, [throttled]]  # the retry is for that recipient only
    kept, recount = await counters_and_recount(fast, campaign.id)
    assert kept == recount
    assert (kept["sent_count"], kept["failed_count"]) == (5, 1)


def statuses_of(rows: list[Any]) -> dict[str, tuple[str, str | None]]:
    return {row.email: (row.status, row.skip_reason) for row in rows}


async def test_every_documented_status_is_mapped_to_sent_failed_or_retried(
    fast: WorkerDeps, tenant: Tenant, aws_endpoint: str, ses_bulk: BulkEndpoint
) -> None:
    failing = ["MAIL_FROM_DOMAIN_NOT_VERIFIED", "CONFIGURATION_SET_DOES_NOT_EXIST", "CONFIGURATION_SET_NOT_FOUND",
               "TEMPLATE_DOES_NOT_EXIST", "TEMPLATE_NOT_FOUND", "ACCOUNT_SUSPENDED", "INVALID_SENDING_POOL_NAME",
               "INVALID_PARAMETER", "INVALID_PARAMETER_VALUE", "FAILED"]  # fmt: skip
    retried = ["TRANSIENT_FAILURE", "ACCOUNT_DAILY_QUOTA_EXCEEDED", "ACCOUNT_SENDING_PAUSED",
               "CONFIGURATION_SET_SENDING_PAUSED"]  # fmt: skip
    campaign, _ = await snapshotted(fast, tenant, len(failing) + len(retried))
    emails = [row.email for row in await recipient_rows(fast, campaign.id)]
    for address, status in zip(emails, failing + retried, strict=True):
        ses_bulk.answer(address, status)
    async with running(fast):
        await wait_for_status(fast, campaign.id, "sent")
    found = statuses_of(await recipient_rows(fast, campaign.id))
    for address, status in zip(emails, failing, strict=False):
        assert found[address] == ("failed", status)
    for address in emails[len(failing) :]:
        assert found[address] == ("sent", None)
    sends = sends_by_recipient(aws_endpoint)
    assert set(sends) == {e.lower() for e in emails[len(failing) :]}
    assert set(sends.values()) == {1}


async def test_per_recipient_template_logic_falls_back_to_one_send_email_each(
    fast: WorkerDeps, tenant: Tenant, aws_endpoint: str, ses_bulk: BulkEndpoint
) -> None:
    await add_groups(fast, tenant, {"all": Group(5)})
    html = "<p>{% if email.endswith('.com') %}Hi {{ email|upper }}{% endif %}</p>"
    campaign = await new_campaign(fast, tenant, subject="Hi", html_body=html, text_body=None)
    plan = plan_send(await content_of(fast, campaign))
    assert (plan.mode, plan.template) == ("per_recipient", None)
    assert plan.reason == "email used beyond {{ email }}"
    await queue_and_send(fast, campaign)
    assert ses_bulk.requests == []
    messages = raw_messages(aws_endpoint)
    assert len(messages) == 5
    for message in messages:
        assert f"Hi {message['To'].upper()}" in body(message, "html")


async def test_bulk_sending_switched_off_sends_each_recipient_with_send_email(
    worker_env: WorkerEnv, aws_endpoint: str, ses_bulk: BulkEndpoint
) -> None:
    """CAMPAIGN_BULK_SEND=false (what `datamailer up` sets for moto's server, which has
    no SendBulkEmail): content that would go out in bulk is sent per recipient."""
    settings = worker_env.settings(SES_MAX_SEND_RATE="2000", PUBLIC_BASE_URL=BASE, CAMPAIGN_BULK_SEND="false")
    async with open_deps(settings) as deps:
        tenant = await sending_tenant(deps)
        await add_groups(deps, tenant, {"all": Group(4)})
        campaign = await new_campaign(
            deps, tenant, subject="News for {{ email }}", html_body=HTML, text_body=TEXT
        )
        plan = plan_send(await content_of(deps, campaign))
        assert (plan.mode, plan.reason) == ("per_recipient", "bulk_send_disabled")
        await queue_and_send(deps, campaign)
    assert ses_bulk.requests == []
    assert len(raw_messages(aws_endpoint)) == 4
