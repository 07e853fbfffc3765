"""The test SES v2 `SendBulkEmail` endpoint (tests/ses_bulk.py) through a real aioboto3
client: AWS's documented request and response, substitution without escaping, headers,
injected statuses, and moto behind it for everything else."""

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from datamailer_core.aws import aws_client, aws_session
from datamailer_core.settings import Settings
from tests.ses_bulk import BulkEndpoint, bulk_messages

SENDER = "news@bulk.example.com"


@pytest.fixture
async def sesv2(settings: Settings) -> AsyncIterator[Any]:
    async with aws_client(aws_session(settings.aws), settings.aws, "sesv2") as client:
        await client.create_email_identity(EmailIdentity=SENDER)
        yield client


def entry(address: str, data: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "Destination": {"ToAddresses": [address]},
        "ReplacementEmailContent": {"ReplacementTemplate": {"ReplacementTemplateData": json.dumps(data)}},
        **extra,
    }


TEMPLATE = {
    "TemplateContent": {
        "Subject": "Hi {{name}}",
        "Html": "<p>{{ name }} &amp; {{ shared }}</p><a href='https://x.example/{{t}}'>x</a>",
        "Text": "{{name}} / {{shared}} / {{who.first}}",
    },
    "TemplateData": json.dumps({"shared": "everyone", "name": "default", "who": {"first": "Ada"}}),
    "Headers": [{"Name": "X-Campaign", "Value": "c1"}, {"Name": "List-Unsubscribe", "Value": "<x>"}],
}


async def test_entries_are_rendered_from_merged_data_with_replacement_headers_and_tags(
    sesv2: Any, aws_endpoint: str, ses_bulk: BulkEndpoint
) -> None:
    response = await sesv2.send_bulk_email(
        FromEmailAddress=f"News <{SENDER}>",
        DefaultContent={"Template": TEMPLATE},
        DefaultEmailTags=[{"Name": "campaign_id", "Value": "7"}],
        BulkEmailEntries=[
            entry("a@example.com", {"name": "<b>Ann</b>", "t": "tok-a"},
                  ReplacementHeaders=[{"Name": "list-unsubscribe", "Value": "<https://u.example/a>"}]),
            entry("b@example.com", {"t": "tok-b"}, ReplacementTags=[{"Name": "campaign_id", "Value": "8"}]),
        ],
        ConfigurationSetName="events",
    )  # fmt: skip
    results = response["BulkEmailEntryResults"]
    assert [r["Status"] for r in results] == ["SUCCESS", "SUCCESS"]
    assert len({r["MessageId"] for r in results}) == 2
    first, second = bulk_messages(aws_endpoint)
    assert first["message_id"] == results[0]["MessageId"]
    assert first["subject"] == "Hi <b>Ann</b>"
    assert first["html"] == "<p><b>Ann</b> &amp; everyone</p><a href='https://x.example/tok-a'>x</a>"
    assert first["text"] == "<b>Ann</b> / everyone / Ada"
    assert first["headers"] == {"X-Campaign": "c1", "list-unsubscribe": "<https://u.example/a>"}
    assert first["tags"] == {"campaign_id": "7"}
    assert first["configuration_set"] == "events"
    assert first["destinations"] == ["a@example.com"]
    assert second["subject"] == "Hi default"
    assert second["headers"] == {"X-Campaign": "c1", "List-Unsubscribe": "<x>"}
    assert second["tags"] == {"campaign_id": "8"}
    parsed = ses_bulk.messages[0].as_email()
    assert parsed["From"] == f"News <{SENDER}>"
    assert parsed["List-Unsubscribe"] == "<https://u.example/a>"


async def test_injected_statuses_answer_their_entries_only_and_nothing_is_recorded_for_them(
    sesv2: Any, aws_endpoint: str, ses_bulk: BulkEndpoint
) -> None:
    ses_bulk.answer("b@example.com", "MESSAGE_REJECTED")
    ses_bulk.answer("c@example.com", "ACCOUNT_THROTTLED", "SUCCESS")
    entries = [entry(f"{x}@example.com", {"name": x, "t": x}) for x in "abc"]
    results = (
        await sesv2.send_bulk_email(FromEmailAddress=SENDER, DefaultContent={"Template": TEMPLATE},
                                    BulkEmailEntries=entries)
    )["BulkEmailEntryResults"]  # fmt: skip
    assert [r["Status"] for r in results] == ["SUCCESS", "MESSAGE_REJECTED", "ACCOUNT_THROTTLED"]
    assert "MessageId" not in results[1]
    assert results[1]["Error"]
    assert [m["destinations"] for m in bulk_messages(aws_endpoint)] == [["a@example.com"]]
    again = (
        await sesv2.send_bulk_email(FromEmailAddress=SENDER, DefaultContent={"Template": TEMPLATE},
                                    BulkEmailEntries=entries[1:])
    )["BulkEmailEntryResults"]  # fmt: skip
    assert [r["Status"] for r in again] == ["SUCCESS", "SUCCESS"]


async def test_a_missing_variable_is_a_rendering_failure_not_a_message(
    sesv2: Any, aws_endpoint: str, ses_bulk: BulkEndpoint
) -> None:
    template = {"TemplateContent": {"Subject": "{{ missing }}", "Text": "x"}}
    results = (
        await sesv2.send_bulk_email(FromEmailAddress=SENDER, DefaultContent={"Template": template},
                                    BulkEmailEntries=[entry("a@example.com", {})])
    )["BulkEmailEntryResults"]  # fmt: skip
    assert results[0]["Status"] == "SUCCESS"
    assert bulk_messages(aws_endpoint) == []
    assert [f["destinations"] for f in ses_bulk.rendering_failures] == [["a@example.com"]]


async def test_unverified_sender_and_bad_requests_fail_the_whole_call(sesv2: Any) -> None:
    with pytest.raises(ClientError) as rejected:
        await sesv2.send_bulk_email(FromEmailAddress="nobody@unverified.example",
                                    DefaultContent={"Template": TEMPLATE},
                                    BulkEmailEntries=[entry("a@example.com", {})])  # fmt: skip
    assert rejected.value.response["Error"]["Code"] == "MessageRejected"
    with pytest.raises(ClientError) as too_many:
        await sesv2.send_bulk_email(FromEmailAddress=SENDER, DefaultContent={"Template": TEMPLATE},
                                    BulkEmailEntries=[entry(f"{i}@example.com", {}) for i in range(51)])  # fmt: skip
    assert too_many.value.response["Error"]["Code"] == "BadRequestException"


async def test_everything_else_reaches_moto(sesv2: Any) -> None:
    identities = (await sesv2.list_email_identities())["EmailIdentities"]
    assert SENDER in [i["IdentityName"] for i in identities]
    sent = await sesv2.send_email(
        FromEmailAddress=SENDER,
        Destination={"ToAddresses": ["a@example.com"]},
        Content={"Simple": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "t"}}}},
    )
    assert sent["MessageId"]
