"""`GET /t/c/{token}?u=<link>&s=<signature>`: the click redirect.

The signature (an HMAC of token and link, `campaigns.message.click_signature`) proves
the link was rewritten for that token when the message was built, so only links that
were in a sent message can be reached: no open redirect, and nothing per link stored.
Preview and test-send messages carry a placeholder token; their links redirect too, but
only a real token's click is published."""

import re
from typing import Final
from urllib.parse import urlsplit

from datamailer_core.campaigns.message import SIGNATURE_CHARS, click_target_is_genuine
from datamailer_tracking.events import EventSink, tracking_event
from datamailer_tracking.pixel import TOKEN

# Checked before the constant-time comparison, which refuses non-ASCII strings.
_SIGNATURE: Final = re.compile(f"[0-9a-f]{{{SIGNATURE_CHARS}}}")
INVALID_PAGE: Final = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">
<title>This link is not valid</title></head>
<body><h1>This link is not valid</h1>
<p>The link may have been changed or cut short. Try opening it again from the email.</p>
</body></html>
"""


def is_web_link(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def click_target(secret_key: str, token: str, url: str | None, signature: str | None) -> str | None:
    """The link to redirect to: only when the signature holds for this token and link
    and the link is http(s); else None (a 400 page, nothing recorded)."""
    if (
        not url
        or not signature
        or not _SIGNATURE.fullmatch(signature)
        or not is_web_link(url)
        or not click_target_is_genuine(secret_key, token, url, signature)
    ):
        return None
    return url


async def record_click(
    events: EventSink, token: str, url: str, user_agent: str | None, ip: str | None
) -> None:
    if TOKEN.fullmatch(token):
        await events.submit(tracking_event("click", token, user_agent, ip, url=url))
