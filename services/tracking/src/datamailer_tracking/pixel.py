"""`GET /t/o/{token}.gif`: the open pixel. Every token gets the same GIF at once; a
well-formed token's open is published to `email-events` for the worker to apply (no
database here)."""

import re
from typing import Final

from datamailer_tracking.events import EventSink, tracking_event

# `security.new_token`: 32 random bytes, URL-safe base64 without padding. Anything else
# (a preview's placeholder, a mangled link) can never match a recipient.
TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{43}")

# A 1×1 transparent GIF89a: header, logical screen with a 2-colour table, a graphic
# control extension marking colour 0 transparent, one image, trailer.
PIXEL: Final = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)

# Every fetch must reach the server again: no browser, proxy or CDN may answer for us.
NO_STORE: Final = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}


async def record_open(events: EventSink, token: str, user_agent: str | None, ip: str | None) -> None:
    if TOKEN.fullmatch(token):
        await events.submit(tracking_event("open", token, user_agent, ip))
