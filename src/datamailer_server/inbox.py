"""`datamailer dev inbox`: the messages moto's SES received, readable. moto's server keeps
them in memory and shows them at `/moto-api/data.json` (raw MIME for SendEmail with raw
content, fields for the simple form); this decodes the MIME so a newcomer reads the mail
a campaign or a transactional send produced, without base64."""

import email
import email.policy
import json
import urllib.request
from email.message import EmailMessage
from typing import Any

from datamailer_core.errors import DatamailerError


def fetch_sent(endpoint: str) -> list[dict[str, Any]]:
    url = endpoint.rstrip("/") + "/moto-api/data.json"
    if not url.startswith(("http://", "https://")):
        raise DatamailerError(f"AWS_ENDPOINT_URL is not an http(s) URL: {endpoint}")
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310  (checked above)
            data = json.load(response)
    except (OSError, ValueError) as exc:
        raise DatamailerError(
            f"could not read {url} (is `datamailer up`'s moto server running?): {exc}"
        ) from None
    ses = data.get("ses", {}) if isinstance(data, dict) else {}
    messages: list[dict[str, Any]] = []
    for item in ses.get("RawMessage", []):
        messages.append(_from_raw(str(item.get("raw_data", ""))))
    for item in ses.get("Message", []):
        # moto keeps the simple form's body as one string (the HTML part when there is one).
        body = item.get("body") or ""
        if isinstance(body, dict):
            body = body.get("text_part") or body.get("html_part") or ""
        messages.append(
            {
                "from": item.get("source", ""),
                "to": ", ".join((item.get("destinations") or {}).get("ToAddresses", [])),
                "subject": item.get("subject", ""),
                "text": str(body),
            }
        )
    return messages


def _from_raw(raw: str) -> dict[str, Any]:
    message = email.message_from_string(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    part = message.get_body(("plain",)) or message.get_body(("html",))
    text = part.get_content() if isinstance(part, EmailMessage) else ""
    return {
        "from": str(message.get("From", "")),
        "to": str(message.get("To", "")),
        "subject": str(message.get("Subject", "")),
        "text": str(text).strip(),
    }


def render(messages: list[dict[str, Any]], limit: int) -> str:
    shown = messages[-limit:] if limit else messages
    if not shown:
        return "no messages in the local SES yet"
    blocks = [f"From: {m['from']}\nTo: {m['to']}\nSubject: {m['subject']}\n\n{m['text']}" for m in shown]
    return ("\n" + "-" * 72 + "\n").join(blocks)
