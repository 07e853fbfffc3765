"""Raw SES notifications normalize to the `ses-webhooks` v1 contract, from the SNS
envelope and from raw message delivery, in both SES flavours; anything else is refused
with a ContractError that names no input values."""

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from datamailer_core.contracts import ContractError, SesWebhookV1, dump_message, parse_message
from datamailer_core.ses_notifications import SesNotificationError, normalize, occurred_at
from tests.core import ses_samples as samples

AT = datetime(2026, 12, 3, 14, 0, tzinfo=UTC)

CASES = [
    ("bounce", samples.bounce("m-1")),
    ("bounce", samples.bounce("m-1", bounce_type="Transient", form="classic")),
    ("complaint", samples.complaint("m-1")),
    ("complaint", samples.complaint("m-1", form="classic")),
    ("delivery", samples.delivery("m-1")),
    ("delivery", samples.delivery("m-1", form="classic")),
    ("delivery_delay", samples.delivery_delay("m-1")),
    ("reject", samples.reject("m-1")),
    ("rendering_failure", samples.rendering_failure("m-1")),
]


@pytest.mark.parametrize(("kind", "ses"), CASES)
def test_an_sns_envelope_normalizes_to_the_contract(kind: str, ses: dict[str, Any]) -> None:
    msg = normalize(samples.sns_envelope(ses, "sns-1"), received_at=AT)
    assert msg == SesWebhookV1(
        provider="ses",
        provider_event_id="sns-1",
        notification_type=kind,
        received_at=AT,
        ses_message_id="m-1",
        metadata={"ses": ses},
    )
    assert parse_message(dump_message(msg), "ses-webhooks") == msg


@pytest.mark.parametrize(("kind", "ses"), CASES)
def test_a_raw_delivery_body_normalizes_with_a_stable_id(kind: str, ses: dict[str, Any]) -> None:
    first = normalize(ses, received_at=AT)
    again = normalize(json.loads(json.dumps(ses)))
    assert first.notification_type == kind
    assert first.ses_message_id == "m-1"
    assert first.metadata == {"ses": ses}
    assert first.provider_event_id.startswith("raw:")
    assert again.provider_event_id == first.provider_event_id
    other = normalize({**ses, "mail": {**ses["mail"], "messageId": "m-2"}})
    assert other.provider_event_id != first.provider_event_id


def test_parse_message_accepts_raw_bodies_on_the_ses_queue_only() -> None:
    ses = samples.bounce("m-1")
    for body in (samples.sns_envelope(ses, "sns-9"), ses):
        parsed = parse_message(json.dumps(body), "ses-webhooks")
        assert isinstance(parsed, SesWebhookV1)
        assert parsed.notification_type == "bounce"
        assert parse_message(json.dumps(body)).contract == "ses-webhooks"
        with pytest.raises(ContractError) as caught:
            parse_message(json.dumps(body), "email-events")
        assert caught.value.reason == "unknown_contract"


def test_received_at_defaults_to_now_and_the_occurrence_comes_from_ses() -> None:
    msg = normalize(samples.sns_envelope(samples.bounce("m-1")))
    assert abs((msg.received_at - datetime.now(UTC)).total_seconds()) < 60
    assert occurred_at(msg.metadata["ses"], "bounce") == datetime(2017, 8, 5, 0, 41, 2, 669000, tzinfo=UTC)
    delay = samples.delivery_delay("m-1")
    assert occurred_at(delay, "delivery_delay") == datetime(2020, 6, 16, 0, 15, 40, 641000, tzinfo=UTC)
    # Reject has no timestamp of its own: the mail's.
    assert occurred_at(samples.reject("m-1"), "reject") == datetime(2017, 8, 5, 0, 40, 2, 12000, tzinfo=UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        normalize(samples.bounce("m-1"), received_at=datetime(2026, 1, 1))  # noqa: DTZ001


def _envelope(**changes: Any) -> dict[str, Any]:
    body = samples.sns_envelope(samples.bounce("m-1"))
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


MALFORMED: list[Any] = [
    _envelope(Type="SubscriptionConfirmation"),
    _envelope(MessageId=None),
    _envelope(MessageId=""),
    _envelope(Message=None),
    _envelope(Message="not json"),
    _envelope(Message="[1, 2]"),
    _envelope(Message='{"notificationType": "Bounce", "mail": {"messageId": "x"}, "n": NaN}'),
    _envelope(Message=json.dumps({"eventType": "Bounce"})),
    _envelope(Message=json.dumps({"eventType": "Received", "mail": {"messageId": "x"}})),
    _envelope(Message=json.dumps({"eventType": 7, "mail": {"messageId": "x"}})),
    _envelope(Message=json.dumps({"eventType": "Bounce", "mail": {"messageId": ""}})),
    {"eventType": "Bounce", "mail": {"messageId": "x"}, "when": datetime(2026, 1, 1, tzinfo=UTC)},
    {"eventType": "Bounce", "mail": {"messageId": "x"}, "n": float("inf")},
    {"hello": "world"},
    ["not", "an", "object"],
]


@pytest.mark.parametrize("body", MALFORMED)
def test_malformed_notifications_raise_a_contract_error_without_the_values(body: Any) -> None:
    with pytest.raises(SesNotificationError) as caught:
        normalize(body)
    assert isinstance(caught.value, ContractError)
    assert isinstance(caught.value, ValueError)
    assert caught.value.reason == "invalid_payload"
    assert "recipient@example.com" not in str(caught.value)
    if isinstance(body, dict) and "Type" in body:
        with pytest.raises(ContractError) as parsed:
            parse_message(json.dumps(body), "ses-webhooks")
        assert parsed.value.reason == "invalid_payload"
