"""What a campaign's templates can use, the same in the preview and in the real send.

Campaign bodies are templates like transactional ones (`datamailer_core.templating`):
`{{ email }}`, `{{ unsubscribe_url }}` and `{{ preferences_url }}` per recipient, plus
whatever the caller adds. A preview renders them with placeholder tokens."""

from collections.abc import Mapping
from typing import Any, Final

PREVIEW_TOKEN: Final = "preview-token"
PREVIEW_EMAIL: Final = "recipient@example.com"


def unsubscribe_url(public_base_url: str, token: str) -> str:
    """The unsubscribe page, which also manages category preferences (spec/api.md)."""
    return f"{public_base_url.rstrip('/')}/unsubscribe/{token}"


def recipient_context(
    *, email: str, public_base_url: str, unsubscribe_token: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    url = unsubscribe_url(public_base_url, unsubscribe_token)
    # The recipient's own values win over anything a caller passes in `extra`.
    return {**(extra or {}), "email": email, "unsubscribe_url": url, "preferences_url": url}
