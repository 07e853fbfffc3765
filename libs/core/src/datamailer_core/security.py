"""API keys and public tokens. Raw secrets are shown once and never stored: keys are kept
as a keyed hash (HMAC-SHA256 under SECRET_KEY) and compared in constant time."""

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

KEY_PREFIX = "dm_"
_KEY_RE = re.compile(r"dm_([A-Za-z0-9]{1,12})_([A-Za-z0-9_-]{43,128})")  # use with fullmatch


@dataclass(frozen=True)
class IssuedKey:
    public_id: str
    raw: str
    key_hash: str


def _hmac(secret_key: str, purpose: str, value: str) -> str:
    return hmac.new(f"{purpose}:{secret_key}".encode(), value.encode(), hashlib.sha256).hexdigest()


def hash_api_key(secret_key: str, raw_key: str) -> str:
    return _hmac(secret_key, "api-key", raw_key)


def issue_api_key(secret_key: str) -> IssuedKey:
    public_id = secrets.token_hex(6)  # 12 lowercase alphanumerics
    raw = f"{KEY_PREFIX}{public_id}_{secrets.token_urlsafe(32)}"
    return IssuedKey(public_id=public_id, raw=raw, key_hash=hash_api_key(secret_key, raw))


def parse_api_key(raw: str) -> str | None:
    """The public id of a well-formed key, or None."""
    match = _KEY_RE.fullmatch(raw)
    return match.group(1) if match else None


def api_key_matches(secret_key: str, raw_key: str, key_hash: str) -> bool:
    return hmac.compare_digest(hash_api_key(secret_key, raw_key), key_hash)


def new_token() -> str:
    """A URL-safe token carrying 256 random bits."""
    return secrets.token_urlsafe(32)


def hash_token(secret_key: str, token: str) -> str:
    return _hmac(secret_key, "token", token)
