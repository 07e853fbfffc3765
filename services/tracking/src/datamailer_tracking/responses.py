"""What the public routes share: token shape, no-cache headers."""

import re
from typing import Final

from fastapi import Request

from datamailer_tracking.events import EventPublisher

# `security.new_token`: 32 random bytes, URL-safe base64 without padding. Anything else
# (a preview's placeholder, a mangled link) can never match a recipient.
TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{43}")

# Every fetch must reach the server again: no browser, proxy or CDN may answer for us.
NO_STORE: Final = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}


def events(request: Request) -> EventPublisher:
    publisher: EventPublisher = request.app.state.events
    return publisher
