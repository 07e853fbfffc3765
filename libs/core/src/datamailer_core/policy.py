"""Who may receive what. Pure rules over contact and subscription state, shared by the
API, the transactional send path and the campaign snapshot."""

from datetime import datetime

from datamailer_core.models.contacts import BAD_VALIDATION_STATUSES


def marketing_suppressed(
    global_unsubscribed_at: datetime | None, hard_bounced_at: datetime | None, complained_at: datetime | None
) -> bool:
    return any((global_unsubscribed_at, hard_bounced_at, complained_at))


def can_send_transactional(hard_bounced_at: datetime | None, complained_at: datetime | None) -> bool:
    return hard_bounced_at is None and complained_at is None


def can_send_marketing(
    *,
    verified: bool,
    global_unsubscribed_at: datetime | None,
    hard_bounced_at: datetime | None,
    complained_at: datetime | None,
    validation_status: str,
    client_status: str | None,
    audience_status: str | None = None,
) -> bool:
    """Verified at any level, not suppressed, validation not bad, the client subscription
    `subscribed`, and not unsubscribed from the whole audience."""
    return (
        verified
        and not marketing_suppressed(global_unsubscribed_at, hard_bounced_at, complained_at)
        and validation_status not in BAD_VALIDATION_STATUSES
        and client_status == "subscribed"
        and audience_status != "unsubscribed"
    )


def transactional_block_reason(
    *,
    hard_bounced: bool,
    complained: bool,
    global_unsubscribed: bool = False,
    category_tag: str | None = None,
    category_enabled: bool = True,
) -> str | None:
    """Why a transactional message may not be delivered, or None, in the vocabulary of
    skip reasons. Hard bounces and complaints always block; with a category, so do a
    global unsubscribe and a disabled category. A marketing subscription is not required."""
    if hard_bounced:
        return "hard_bounce"
    if complained:
        return "complaint"
    if category_tag is not None:
        if global_unsubscribed:
            return "global_unsubscribe"
        if not category_enabled:
            return "category_unsubscribe"
    return None
