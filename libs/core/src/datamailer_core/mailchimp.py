"""Mailchimp sync, the pure parts: the data center of an API key, the subscriber hash,
which tag mappings a recipient-list key falls under, and the member status a contact
maps to."""

import hashlib
import re
from collections.abc import Iterable
from typing import Final

ALL_LISTS: Final = "<all>"
# Mailchimp keys end in `-<data center>`, e.g. `...-us21`.
_KEY = re.compile(r"^[A-Za-z0-9]{8,64}-([a-z]{2,5}[0-9]{1,3})$")


def datacenter(api_key: str) -> str | None:
    found = _KEY.match(api_key)
    return found.group(1) if found else None


def base_url(api_key: str, override: str | None) -> str:
    """`https://<dc>.api.mailchimp.com/3.0`, or the configured override (tests)."""
    if override:
        return override.rstrip("/")
    return f"https://{datacenter(api_key)}.api.mailchimp.com/3.0"


def subscriber_hash(email: str) -> str:
    """Mailchimp's member id: the MD5 of the lowercased address."""
    return hashlib.md5(email.strip().lower().encode(), usedforsecurity=False).hexdigest()


def covers(list_key: str, key: str) -> bool:
    """Whether a mapping on `list_key` applies to a member of `key`: the same node, a
    descendant (`a:b` covers `a:b:c`, not `a:bc`), or anything for `<all>`."""
    return list_key == ALL_LISTS or key == list_key or key.startswith(list_key + ":")


def mapped_tags(mappings: Iterable[tuple[str, str]], keys: Iterable[str]) -> set[str]:
    """The tags of the `(list_key, tag)` mappings that cover any of `keys`."""
    keys = list(keys)
    return {tag for list_key, tag in mappings if any(covers(list_key, k) for k in keys)}


def tag_changes(
    mappings: Iterable[tuple[str, str]], added: Iterable[str], removed: Iterable[str], current: Iterable[str]
) -> list[dict[str, str]]:
    """The Mailchimp tag operations for keys joined and left: tags covering an added key
    become active; tags covering a removed key become inactive unless a key the member
    still has keeps them."""
    mappings = list(mappings)
    active = mapped_tags(mappings, added)
    kept = mapped_tags(mappings, current)
    inactive = mapped_tags(mappings, removed) - kept - active
    return [{"name": t, "status": "active"} for t in sorted(active)] + [
        {"name": t, "status": "inactive"} for t in sorted(inactive)
    ]


def member_status(*, suppressed: bool, unsubscribed: bool, subscribed: bool) -> tuple[str | None, str]:
    """`(status, status_if_new)` for the member PUT. A contact that has not opted in is
    added as `transactional` (Mailchimp sends it no marketing) and an existing member's
    status is left alone; opt-outs and suppression always become `unsubscribed`."""
    if suppressed or unsubscribed:
        return "unsubscribed", "unsubscribed"
    if subscribed:
        return "subscribed", "subscribed"
    return None, "transactional"
