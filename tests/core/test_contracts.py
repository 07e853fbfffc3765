"""Queue contracts v1 (spec/queues.md, "Envelope"): what a worker accepts, what it refuses
and why, and that what a producer dumps is exactly what a worker parses."""

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from datamailer_core.contracts import (
    DLQ_SUFFIX,
    QUEUE_NAMES,
    CampaignEmailV1,
    ContractError,
    EmailEventV1,
    SesWebhookV1,
    TransactionalEmailV1,
    dump_message,
    parse_message,
)

MODELS: dict[str, type[BaseModel]] = {
    "transactional-email": TransactionalEmailV1,
    "campaign-email": CampaignEmailV1,
    "ses-webhooks": SesWebhookV1,
    "email-events": EmailEventV1,
}

MINIMAL: dict[str, dict[str, Any]] = {
    "transactional-email": {
        "contract": "transactional-email",
        "version": 1,
        "transactional_message_id": 42,
        "client_id": 7,
        "idempotency_key": "tx-42",
    },
    "campaign-email": {
        "contract": "campaign-email",
        "version": 1,
        "campaign_id": 55,
        "batch_id": "campaign-55-batch-0001",
        "campaign_recipient_ids": [1001],
    },
    "ses-webhooks": {
        "contract": "ses-webhooks",
        "version": 1,
        "provider": "ses",
        "provider_event_id": "0b7a1f0e-sns-message-id",
        "notification_type": "delivery",
        "received_at": "2024-05-01T12:00:00Z",
    },
    "email-events": {
        "contract": "email-events",
        "version": 1,
        "event_id": "evt-1",
        "event_type": "open",
        "occurred_at": "2024-05-01T12:00:00.123456+02:00",
        "idempotency_key": "open:tok:1",
    },
}

FULL: dict[str, dict[str, Any]] = {
    "transactional-email": {
        **MINIMAL["transactional-email"],
        "contact_id": 9,
        "template_id": 3,
        "template_key": "password-reset",
        "metadata": {"locale": "fr", "nested": {"list": [1, 2.5, None, True, "x"]}},
    },
    "campaign-email": {
        **MINIMAL["campaign-email"],
        "campaign_recipient_ids": [1001, 1002, 1003],
        "idempotency_key": "campaign-55-batch-0001",
        "metadata": {"attempt": 2},
    },
    "ses-webhooks": {
        **MINIMAL["ses-webhooks"],
        "notification_type": "rendering_failure",
        "received_at": "2024-05-01T12:00:00-05:00",
        "ses_message_id": "010001-ses-id",
        "raw_payload_s3_key": "ses/2024/05/01/abc.json",
        "metadata": {"source": "http"},
    },
    "email-events": {
        **MINIMAL["email-events"],
        "event_type": "click",
        "campaign_id": 55,
        "campaign_recipient_id": 1001,
        "transactional_message_id": 42,
        "contact_id": 9,
        "client_id": 7,
        "audience_id": 4,
        "tracking_token": "tok",
        "url": "https://example.com/a?b=c",
        "metadata": {"user_agent": "Mozilla/5.0"},
    },
}

REQUIRED: dict[str, list[str]] = {
    "transactional-email": ["transactional_message_id", "client_id", "idempotency_key"],
    "campaign-email": ["campaign_id", "batch_id", "campaign_recipient_ids"],
    "ses-webhooks": ["provider", "provider_event_id", "notification_type", "received_at"],
    "email-events": ["event_id", "event_type", "occurred_at", "idempotency_key"],
}

VALID_BODIES = [
    pytest.param(bodies[name], id=f"{name}-{kind}")
    for kind, bodies in (("minimal", MINIMAL), ("full", FULL))
    for name in QUEUE_NAMES
]


def body_with(contract: str, /, **changes: Any) -> str:
    return json.dumps({**FULL[contract], **changes})


def body_without(contract: str, field: str) -> str:
    return json.dumps({k: v for k, v in FULL[contract].items() if k != field})


def reason_for(body: str | bytes, expected: Any = None) -> str:
    with pytest.raises(ContractError) as excinfo:
        parse_message(body, expected=expected)
    return excinfo.value.reason


# --- valid bodies ---------------------------------------------------------------------


@pytest.mark.parametrize("body", VALID_BODIES)
def test_valid_body_parses_into_its_model_with_every_field(body: dict[str, Any]) -> None:
    msg = parse_message(json.dumps(body))

    assert type(msg) is MODELS[body["contract"]]
    dumped = msg.model_dump(mode="json")
    assert {key: dumped[key] for key in body} == body


@pytest.mark.parametrize("body", VALID_BODIES)
def test_dumped_message_parses_back_equal_from_str_and_bytes(body: dict[str, Any]) -> None:
    msg = parse_message(json.dumps(body).encode())

    text = dump_message(msg)

    assert parse_message(text) == msg
    assert parse_message(text.encode()) == msg
    assert json.dumps(json.loads(text), separators=(",", ":")) == text  # compact
    assert text.startswith(f'{{"contract":"{body["contract"]}","version":1,')


def test_timestamps_keep_their_instant_and_dump_with_an_offset() -> None:
    msg = parse_message(json.dumps(FULL["ses-webhooks"]))

    assert isinstance(msg, SesWebhookV1)
    assert msg.received_at == datetime(2024, 5, 1, 17, 0, tzinfo=UTC)
    assert '"received_at":"2024-05-01T12:00:00-05:00"' in dump_message(msg)


def test_optional_fields_default_to_none_and_empty_metadata() -> None:
    msg = parse_message(json.dumps(MINIMAL["campaign-email"]))

    assert isinstance(msg, CampaignEmailV1)
    assert msg.idempotency_key is None
    assert msg.effective_idempotency_key == "campaign-55-batch-0001"
    assert msg.metadata == {}
    assert msg.campaign_recipient_ids == (1001,)


def test_explicit_campaign_idempotency_key_wins_over_batch_id() -> None:
    msg = parse_message(body_with("campaign-email", idempotency_key="custom-key"))

    assert isinstance(msg, CampaignEmailV1)
    assert msg.effective_idempotency_key == "custom-key"


@pytest.mark.parametrize(
    "notification_type",
    [
        "send",
        "reject",
        "delivery",
        "bounce",
        "complaint",
        "open",
        "click",
        "delivery_delay",
        "rendering_failure",
        "subscription",
    ],
)
def test_every_ses_notification_type_is_accepted(notification_type: str) -> None:
    msg = parse_message(body_with("ses-webhooks", notification_type=notification_type))

    assert isinstance(msg, SesWebhookV1)
    assert msg.notification_type == notification_type


@pytest.mark.parametrize("event_type", ["open", "click", "unsubscribe"])
def test_every_tracking_event_type_is_accepted(event_type: str) -> None:
    msg = parse_message(body_with("email-events", event_type=event_type))

    assert isinstance(msg, EmailEventV1)
    assert msg.event_type == event_type


# --- invalid payloads -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("contract", "field"),
    [(contract, field) for contract, fields in REQUIRED.items() for field in fields],
)
def test_missing_required_field_is_invalid_payload(contract: str, field: str) -> None:
    with pytest.raises(ContractError) as excinfo:
        parse_message(body_without(contract, field))

    assert excinfo.value.reason == "invalid_payload"
    assert excinfo.value.contract == contract
    assert field in str(excinfo.value)


NAIVE = "2024-05-01T12:00:00"

WRONG_VALUES = [
    # ints: strict, positive
    ("transactional-email", "transactional_message_id", "5"),
    ("transactional-email", "transactional_message_id", True),
    ("transactional-email", "transactional_message_id", 0),
    ("transactional-email", "transactional_message_id", -1),
    ("transactional-email", "transactional_message_id", 5.0),
    ("transactional-email", "transactional_message_id", None),
    ("transactional-email", "client_id", "7"),
    ("transactional-email", "client_id", False),
    ("transactional-email", "client_id", 0),
    ("transactional-email", "contact_id", "9"),
    ("transactional-email", "contact_id", -1),
    ("transactional-email", "template_id", True),
    ("campaign-email", "campaign_id", "55"),
    ("campaign-email", "campaign_id", 0),
    ("email-events", "campaign_recipient_id", -1),
    ("email-events", "client_id", "7"),
    ("email-events", "audience_id", 0),
    # strings: strict, non-empty
    ("transactional-email", "idempotency_key", ""),
    ("transactional-email", "idempotency_key", 42),
    ("transactional-email", "template_key", ""),
    ("campaign-email", "batch_id", ""),
    ("campaign-email", "batch_id", 1),
    ("campaign-email", "idempotency_key", ""),
    ("ses-webhooks", "provider_event_id", ""),
    ("ses-webhooks", "ses_message_id", 5),
    ("email-events", "event_id", ""),
    ("email-events", "event_id", 1),
    ("email-events", "idempotency_key", ""),
    ("email-events", "url", 5),
    # recipient ids: a non-empty list of positive ints
    ("campaign-email", "campaign_recipient_ids", ["1001", "1002"]),
    ("campaign-email", "campaign_recipient_ids", []),
    ("campaign-email", "campaign_recipient_ids", [1001, 0]),
    ("campaign-email", "campaign_recipient_ids", [1001, -5]),
    ("campaign-email", "campaign_recipient_ids", [True]),
    ("campaign-email", "campaign_recipient_ids", [1.0]),
    ("campaign-email", "campaign_recipient_ids", 1001),
    ("campaign-email", "campaign_recipient_ids", None),
    # enumerations
    ("ses-webhooks", "provider", "sns"),
    ("ses-webhooks", "provider", "SES"),
    ("ses-webhooks", "notification_type", "Bounce"),
    ("ses-webhooks", "notification_type", "bounced"),
    ("email-events", "event_type", "view"),
    ("email-events", "event_type", "OPEN"),
    # timestamps: aware ISO-8601 only
    ("ses-webhooks", "received_at", NAIVE),
    ("ses-webhooks", "received_at", 1714564800),
    ("ses-webhooks", "received_at", "yesterday"),
    ("email-events", "occurred_at", NAIVE),
    ("email-events", "occurred_at", "2024-05-01"),
    # metadata is an object
    ("transactional-email", "metadata", ["a"]),
    ("campaign-email", "metadata", "x"),
    ("ses-webhooks", "metadata", None),
]


@pytest.mark.parametrize(
    ("contract", "field", "value"),
    WRONG_VALUES,
    ids=[f"{c}.{f}={json.dumps(v)}" for c, f, v in WRONG_VALUES],
)
def test_wrongly_typed_or_out_of_range_field_is_invalid_payload(
    contract: str, field: str, value: Any
) -> None:
    with pytest.raises(ContractError) as excinfo:
        parse_message(body_with(contract, **{field: value}))

    assert excinfo.value.reason == "invalid_payload"
    assert field in str(excinfo.value)


@pytest.mark.parametrize("contract", QUEUE_NAMES)
def test_unknown_top_level_field_is_invalid_payload(contract: str) -> None:
    with pytest.raises(ContractError) as excinfo:
        parse_message(body_with(contract, priority="high"))

    assert excinfo.value.reason == "invalid_payload"
    assert "priority" in str(excinfo.value)


def test_non_finite_number_in_metadata_is_refused() -> None:
    body = body_with("transactional-email").replace('"locale": "fr"', '"locale": NaN')

    assert reason_for(body) == "invalid_json"


def test_error_message_does_not_echo_input_values() -> None:
    with pytest.raises(ContractError) as excinfo:
        parse_message(body_with("transactional-email", client_id="alice@example.com"))

    assert "client_id" in str(excinfo.value)
    assert "alice@example.com" not in str(excinfo.value)
    # pydantic's own error repeats the input; a logged traceback must not chain it.
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__suppress_context__


# --- envelope -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "contract",
    ["newsletter", "transactional-email-dlq", "Transactional-Email", "", 1, None, ["campaign-email"]],
)
def test_unknown_contract_is_reported_as_such(contract: Any) -> None:
    assert reason_for(body_with("transactional-email", contract=contract)) == "unknown_contract"


def test_missing_contract_is_unknown_contract() -> None:
    assert reason_for(body_without("email-events", "contract")) == "unknown_contract"


@pytest.mark.parametrize("version", [2, 0, "1", True, 1.0, None, "v1"])
@pytest.mark.parametrize("contract", QUEUE_NAMES)
def test_any_version_but_the_integer_one_is_unsupported(contract: str, version: Any) -> None:
    with pytest.raises(ContractError) as excinfo:
        parse_message(body_with(contract, version=version))

    assert excinfo.value.reason == "unsupported_version"
    assert excinfo.value.contract == contract


@pytest.mark.parametrize("contract", QUEUE_NAMES)
def test_missing_version_is_unsupported(contract: str) -> None:
    assert reason_for(body_without(contract, "version")) == "unsupported_version"


@pytest.mark.parametrize("body", ["", "not json", "{", '{"contract": "ses-webhooks",}', b"\xff\xfe{"])
def test_body_that_is_not_json_is_invalid_json(body: str | bytes) -> None:
    assert reason_for(body) == "invalid_json"


@pytest.mark.parametrize("body", ["[]", json.dumps([MINIMAL["campaign-email"]]), "42", '"text"', "null"])
def test_json_that_is_not_an_object_is_invalid_payload(body: str) -> None:
    assert reason_for(body) == "invalid_payload"


@pytest.mark.parametrize("expected", QUEUE_NAMES)
@pytest.mark.parametrize("contract", QUEUE_NAMES)
def test_expected_queue_accepts_its_own_contract_and_refuses_the_others(contract: str, expected: str) -> None:
    body = json.dumps(FULL[contract])

    if contract == expected:
        assert parse_message(body, expected=expected).contract == contract  # type: ignore[arg-type]
    else:
        assert reason_for(body, expected=expected) == "wrong_queue"


def test_unknown_expected_queue_is_a_programming_error_not_a_contract_error() -> None:
    with pytest.raises(ValueError, match="expected must be one of") as excinfo:
        parse_message(json.dumps(FULL["ses-webhooks"]), expected="newsletter")  # type: ignore[arg-type]

    assert not isinstance(excinfo.value, ContractError)


def test_contract_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid_json"):
        parse_message("nope")


# --- queue names ----------------------------------------------------------------------


def test_queue_names_follow_the_spec_table_and_match_the_models() -> None:
    assert QUEUE_NAMES == ("transactional-email", "campaign-email", "ses-webhooks", "email-events")
    assert [MODELS[name].model_fields["contract"].default for name in QUEUE_NAMES] == list(QUEUE_NAMES)
    assert [name + DLQ_SUFFIX for name in QUEUE_NAMES][0] == "transactional-email-dlq"


# --- building messages in Python ------------------------------------------------------


def test_producer_builds_a_message_without_repeating_the_envelope() -> None:
    sent_at = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    msg = EmailEventV1(
        event_id="evt-9",
        event_type="unsubscribe",
        occurred_at=sent_at,
        idempotency_key="unsub:9",
        metadata={"ids": [1, 2]},
    )

    text = dump_message(msg)

    assert json.loads(text)["contract"] == "email-events"
    assert json.loads(text)["version"] == 1
    assert '"occurred_at":"2024-05-01T12:00:00.123456+05:30"' in text
    assert parse_message(text, expected="email-events") == msg


@pytest.mark.parametrize(
    "changes",
    [
        {"version": True},
        {"version": 2},
        {"contract": "campaign-email"},
        {"occurred_at": datetime(2024, 5, 1, 12, 0)},  # naive
        {"occurred_at": "2024-05-01T12:00:00Z"},  # Python callers pass datetimes
        {"metadata": {"at": datetime(2024, 5, 1, tzinfo=UTC)}},  # would come back a string
        {"metadata": {"pair": (1, 2)}},  # would come back a list
        {"metadata": {"ratio": float("nan")}},  # would come back null
    ],
    ids=repr,
)
def test_producer_cannot_build_a_message_that_would_not_round_trip(changes: dict[str, Any]) -> None:
    fields: dict[str, Any] = {
        "event_id": "evt-9",
        "event_type": "open",
        "occurred_at": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        "idempotency_key": "open:9",
        **changes,
    }

    with pytest.raises(ValidationError):
        EmailEventV1(**fields)


def test_messages_are_frozen() -> None:
    msg = parse_message(json.dumps(FULL["campaign-email"]))

    with pytest.raises(ValidationError, match="frozen"):
        msg.campaign_id = 56  # type: ignore[union-attr,misc]
    assert isinstance(msg, CampaignEmailV1)
    assert msg.campaign_recipient_ids == (1001, 1002, 1003)
