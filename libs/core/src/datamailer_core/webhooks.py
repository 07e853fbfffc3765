"""Outbound webhooks, the pure parts: endpoint URL rules, signing secrets and signatures
in the Standard Webhooks format, and the retry schedule (queues.md "Outbound webhooks to
client applications")."""

import base64
import hashlib
import hmac
import secrets
from typing import Final
from urllib.parse import urlsplit

SECRET_PREFIX: Final = "whsec_"
SECRET_BYTES: Final = 32
MAX_URL_LENGTH: Final = 2048
MAX_ENDPOINTS: Final = 5
# Seconds to wait after failed attempt n (1-based): 1 min, 3 min, ... capped at 12 h; the
# 8th failed attempt is final.
BACKOFF_SECONDS: Final = (60, 180, 540, 1620, 4860, 14580, 43200)
MAX_ATTEMPTS: Final = len(BACKOFF_SECONDS) + 1
DISABLE_AFTER_FAILURES: Final = 10
LOCAL_HOSTS: Final = frozenset({"localhost", "127.0.0.1"})


def generate_secret() -> str:
    """`whsec_` + base64 of random bytes: the receiver's key, shown to the client once."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key: the base64-decoded part after the prefix."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """`webhook-signature`: `v1,` + base64 HMAC-SHA256 over `{id}.{timestamp}.{body}`."""
    signed = f"{event_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def url_problem(url: str, *, production: bool) -> str | None:
    """Why `url` cannot be an endpoint (a field reason), or None. HTTPS only; plain HTTP
    to localhost/127.0.0.1 outside production, for development receivers."""
    if len(url) > MAX_URL_LENGTH:
        return "too_long"
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "invalid"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return "invalid"
    host = (parts.hostname or "").lower()
    if not host or parts.fragment:
        return "invalid"
    if parts.username is not None or parts.password is not None:
        return "credentials_not_allowed"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and not production and host in LOCAL_HOSTS:
        return None
    return "https_required"


def backoff_seconds(attempt: int) -> int | None:
    """The wait after failed attempt `attempt` (1-based), or None when it was the last."""
    if attempt >= MAX_ATTEMPTS:
        return None
    return BACKOFF_SECONDS[attempt - 1]
