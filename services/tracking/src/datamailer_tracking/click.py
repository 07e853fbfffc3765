"""`GET /t/c/{token}?u=<link>&s=<signature>`: the click redirect.

The signature (an HMAC of token and link, `campaigns.message.click_signature`) proves
the link was rewritten for that token when the message was built, so only links that
were in a sent message can be reached: no open redirect, and nothing per link stored.
Preview and test-send messages carry a placeholder token; their links redirect too, but
only a real token's click is published."""

import re
from typing import Annotated, Final
from urllib.parse import urlsplit

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from datamailer_core.campaigns.message import SIGNATURE_CHARS, click_target_is_genuine
from datamailer_tracking.events import tracking_event
from datamailer_tracking.responses import NO_STORE, TOKEN, events

# Checked before the constant-time comparison, which refuses non-ASCII strings.
_SIGNATURE: Final = re.compile(f"[0-9a-f]{{{SIGNATURE_CHARS}}}")
INVALID_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">
<title>This link is not valid</title></head>
<body><h1>This link is not valid</h1>
<p>The link may have been changed or cut short. Try opening it again from the email.</p>
</body></html>
"""

router = APIRouter(tags=["tracking"])


def is_web_link(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


@router.get(
    "/t/c/{token}",
    response_class=RedirectResponse,
    status_code=302,
    responses={400: {"content": {"text/html": {}}, "description": "The link is not valid."}},
)
async def click(
    token: str,
    request: Request,
    u: Annotated[str | None, Query(description="The original link.")] = None,
    s: Annotated[str | None, Query(description="Its signature for this token.")] = None,
) -> Response:
    """302 to the original link when the signature holds for this token and link and the
    link is http(s); else a 400 page and nothing recorded."""
    secret_key = request.app.state.settings.security.secret_key.get_secret_value()
    if (
        not u
        or not s
        or not _SIGNATURE.fullmatch(s)
        or not is_web_link(u)
        or not click_target_is_genuine(secret_key, token, u, s)
    ):
        return HTMLResponse(INVALID_PAGE, status_code=400, headers=NO_STORE)
    if TOKEN.fullmatch(token):
        events(request).submit(tracking_event("click", token, request, url=u))
    return RedirectResponse(u, status_code=302, headers=NO_STORE)
