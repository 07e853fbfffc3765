"""Outgoing SES v2 requests: Simple when it suffices, raw MIME for headers and copies,
the sender's display name, and no way to smuggle a header in."""

import email
import email.policy
from email.message import EmailMessage
from typing import Any

import pytest

from datamailer_core.mail import InvalidMessage, OutgoingEmail, build_ses_request


def mail(**overrides: Any) -> OutgoingEmail:
    values: dict[str, Any] = {
        "from_address": "Support Team <support@example.com>",
        "to": ["ada@example.com"],
        "subject": "Reset your password",
        "html_body": "<p>Hi</p>",
        "text_body": "Hi",
    }
    return OutgoingEmail(**(values | overrides))


def raw_of(request: dict[str, Any]) -> EmailMessage:
    parsed = email.message_from_bytes(request["Content"]["Raw"]["Data"], policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_plain_message_uses_simple_content_with_tags_and_configuration_set() -> None:
    request = build_ses_request(
        mail(reply_to=["help@example.com"]),
        configuration_set="datamailer",
        tags={"transactional_message_id": 12, "client": "acme.app"},
    )

    assert request == {
        "FromEmailAddress": "Support Team <support@example.com>",
        "Destination": {"ToAddresses": ["ada@example.com"]},
        "Content": {
            "Simple": {
                "Subject": {"Data": "Reset your password", "Charset": "UTF-8"},
                "Body": {
                    "Text": {"Data": "Hi", "Charset": "UTF-8"},
                    "Html": {"Data": "<p>Hi</p>", "Charset": "UTF-8"},
                },
            }
        },
        "ReplyToAddresses": ["help@example.com"],
        "ConfigurationSetName": "datamailer",
        "EmailTags": [
            {"Name": "transactional_message_id", "Value": "12"},
            {"Name": "client", "Value": "acme_app"},
        ],
    }


def test_headers_and_copies_switch_to_raw_mime_with_both_bodies() -> None:
    request = build_ses_request(
        mail(
            cc=["audit@example.com"],
            bcc=["archive@example.com"],
            reply_to=["help@example.com"],
            headers={
                "List-Unsubscribe": "<https://t.example.com/u/abc>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
        )
    )

    assert request["Destination"] == {
        "ToAddresses": ["ada@example.com"],
        "CcAddresses": ["audit@example.com"],
        "BccAddresses": ["archive@example.com"],
    }
    raw = raw_of(request)
    assert raw["From"] == "Support Team <support@example.com>"
    assert raw["Cc"] == "audit@example.com"
    assert raw["Reply-To"] == "help@example.com"
    assert raw["Bcc"] is None  # blind copies travel in the envelope only
    assert raw["List-Unsubscribe"] == "<https://t.example.com/u/abc>"
    assert raw["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert raw.get_content_type() == "multipart/alternative"
    text, html = raw.get_body(("plain",)), raw.get_body(("html",))
    assert text is not None
    assert text.get_content().strip() == "Hi"
    assert html is not None
    assert html.get_content().strip() == "<p>Hi</p>"
    assert "ConfigurationSetName" not in request
    assert "EmailTags" not in request


def test_display_name_from_the_sender_is_quoted_or_encoded() -> None:
    plain = build_ses_request(mail(from_address="support@example.com", display_name="Acme, Support"))
    accented = build_ses_request(mail(from_address="support@example.com", display_name="Équipe Acme"))

    assert plain["FromEmailAddress"] == '"Acme, Support" <support@example.com>'
    assert accented["FromEmailAddress"] == "=?utf-8?q?=C3=89quipe_Acme?= <support@example.com>"


def test_html_only_message_in_raw_mime_is_single_part_html() -> None:
    raw = raw_of(build_ses_request(mail(text_body=None, headers={"X-Ref": "1"})))

    assert raw.get_content_type() == "text/html"


def test_line_breaks_in_the_subject_cannot_start_a_header() -> None:
    request = build_ses_request(mail(subject="Hello\r\nBcc: victim@example.com", headers={"X-Ref": "1"}))

    raw = raw_of(request)
    assert raw["Bcc"] is None
    assert raw["Subject"] == "Hello Bcc: victim@example.com"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"headers": {"X-Ref": "a\r\nBcc: victim@example.com"}}, "invalid_headers"),
        ({"headers": {"X-Ref": "a\nb"}}, "invalid_headers"),
        ({"headers": {"Bcc": "victim@example.com"}}, "invalid_headers"),
        ({"headers": {"From": "ceo@example.com"}}, "invalid_headers"),
        ({"headers": {"Bad Name": "x"}}, "invalid_headers"),
        ({"headers": {"X-Colon:": "x"}}, "invalid_headers"),
        ({"to": ["ada@example.com\r\nBcc: victim@example.com"]}, "invalid_to"),
        ({"to": ["ada@example.com, eve@example.com"]}, "invalid_to"),
        ({"to": []}, "invalid_to"),
        ({"cc": ["not-an-address"]}, "invalid_cc"),
        ({"from_address": "Evil\r\nBcc: x@example.com <a@example.com>"}, "invalid_from"),
        ({"display_name": "Evil\nBcc: x@example.com"}, "invalid_from"),
        ({"html_body": None, "text_body": None}, "empty_body"),
    ],
)
def test_unsafe_or_incomplete_messages_are_refused(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        build_ses_request(mail(**overrides))
    assert caught.value.reason == reason


def test_raw_mime_encodes_non_ascii_subjects_names_and_bodies_and_parses_back() -> None:
    request = build_ses_request(
        OutgoingEmail(
            from_address="news@example.com",
            display_name="Zoë Ünïcode",
            to=["ada@example.com"],
            subject="Grüße, " + "long words " * 100,
            html_body="<p>Ça va? 😀</p>",
            text_body="Ça va? 😀\nline two",
            headers={"List-Unsubscribe": "<https://t.example.com/unsubscribe/abc>", "X-Note": "héllo"},
        )
    )
    raw = request["Content"]["Raw"]["Data"]
    assert raw.isascii()
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == "Grüße, " + ("long words " * 100).strip()
    assert parsed["From"].addresses[0].display_name == "Zoë Ünïcode"
    assert parsed["X-Note"] == "héllo"
    assert parsed["List-Unsubscribe"] == "<https://t.example.com/unsubscribe/abc>"
    html, plain = parsed.get_body(("html",)), parsed.get_body(("plain",))
    assert html is not None
    assert plain is not None
    assert html.get_content() == "<p>Ça va? 😀</p>"
    assert plain.get_content().replace("\r\n", "\n") == "Ça va? 😀\nline two"


@pytest.mark.parametrize(
    "to", ["ada@example.com\n", "ada@example.com\r\nBcc: x@y.com", "ada@example.com, b@c.com"]
)
def test_recipient_addresses_with_line_breaks_or_lists_are_refused(to: str) -> None:
    with pytest.raises(InvalidMessage):
        build_ses_request(OutgoingEmail(from_address="news@example.com", to=[to], subject="s", text_body="x"))


CONTROLS = ["\n", "\r", "\x0b", "\x0c", "\x85", "\u2028", "\u2029", "\x1b", "\t", "\u202e", "\ufeff"]


@pytest.mark.parametrize("control", CONTROLS)
def test_no_control_character_reaches_a_header_name_value_or_display_name(control: str) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"headers": {f"Bcc{control}": "victim@example.com"}}, "invalid_headers"),
        ({"headers": {f"X-Ref{control}": "1"}}, "invalid_headers"),
        ({"headers": {"X-Ref": f"a{control}Bcc: victim@example.com"}}, "invalid_headers"),
        ({"display_name": f"Support{control}Bcc: victim@example.com"}, "invalid_from"),
        ({"from_address": f"Support{control}Bcc: e@evil.com <support@example.com>"}, "invalid_from"),
        ({"reply_to": [f"Help{control} <help@example.com>"]}, "invalid_reply_to"),
        ({"cc": [f"Copy <copy@example.com>{control}"]}, "invalid_cc"),
        ({"bcc": [f"blind@example.com{control}"]}, "invalid_bcc"),
    ]
    for overrides, reason in cases:
        with pytest.raises(InvalidMessage) as caught:
            build_ses_request(mail(**overrides))
        assert caught.value.reason == reason, overrides


@pytest.mark.parametrize(
    "address",
    [
        "Sib\u000bBcc: e3@evil.com <sib@example.net>",
        "Sib <sib@example.net> trailing",
        "Sib <sib@example.net>, Eve <eve@example.net>",
        "sib@example.net> x",
        "<sib@example.net> <eve@example.net>",
        "Sib: <sib@example.net>",
        '"Sib" Eve <sib@example.net>',
        "sib@example.net (comment)",
        "Sib <sib@example.net",
    ],
)
def test_an_address_field_is_exactly_one_mailbox_or_refused(address: str) -> None:
    for field in ("from_address", "reply_to", "cc", "bcc", "to"):
        value = address if field == "from_address" else [address]
        with pytest.raises(InvalidMessage):
            build_ses_request(mail(**{field: value}))


def test_one_mailbox_with_a_bare_or_quoted_display_name_is_accepted() -> None:
    request = build_ses_request(
        mail(
            from_address='"Acme, Inc." <news@example.com>',
            reply_to=["Dr. Who <who@example.com>"],
            cc=['"Say \\"hi\\"" <hi@example.com>', "<plain@example.com>"],
            headers={"X-Ref": "1"},
        )
    )
    raw = raw_of(request)
    assert raw["From"].addresses[0].display_name == "Acme, Inc."
    assert raw["Reply-To"].addresses[0].display_name == "Dr. Who"
    assert [(a.display_name, a.addr_spec) for a in raw["Cc"].addresses] == [
        ('Say "hi"', "hi@example.com"),
        ("", "plain@example.com"),
    ]


def test_every_line_break_in_the_subject_becomes_a_space() -> None:
    subject = "A\x0bB\x0cC\x85D\u2028E\u2029F\nBcc: victim@example.com"
    for headers in ({}, {"X-Ref": "1"}):
        request = build_ses_request(mail(subject=subject, headers=headers))
        if headers:
            raw = raw_of(request)
            assert raw["Bcc"] is None
            assert raw["Subject"] == "A B C D E F Bcc: victim@example.com"
        else:
            assert request["Content"]["Simple"]["Subject"]["Data"] == "A B C D E F Bcc: victim@example.com"
