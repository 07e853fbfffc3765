"""Telling a person's open from a machine's fetch of the pixel.

Opens are still recorded and counted in the totals whoever made them; a machine open is
flagged (`metadata.machine`) and left out of the unique *human* opens. The heuristics
are the ones the large senders publish; each is cheap and needs no lookup:

- Apple Mail Privacy Protection prefetches every remote image through Apple's relay
  when the message reaches the device, opened or not. Its fetches come from Apple's own
  network (17.0.0.0/8, the egress Mailchimp, SocketLabs and others report for MPP) and
  send a bare `Mozilla/5.0` user agent, with no platform or engine part.
- Gmail's image proxy (`GoogleImageProxy`, via `ggpht.com`) and Yahoo's
  (`YahooMailProxy`) fetch on the reader's behalf; the load happens when the message is
  shown, but it hides who and where, and caching makes repeated opens invisible, so
  these opens are not counted as a person's either (the conservative reading).
- Link and attachment scanners of security gateways fetch everything in a message.
- Any open within `PREFETCH_SECONDS` of the recipient's `sent_at`: no one reads that
  fast; it is a server-side prefetch or scan at delivery.
"""

import ipaddress
from datetime import datetime
from typing import Final

PREFETCH_SECONDS: Final = 2.0
APPLE_PROXY_NETWORKS: Final = (ipaddress.ip_network("17.0.0.0/8"),)
BARE_USER_AGENT: Final = "Mozilla/5.0"
# Lower-case fragments of the user agents of image proxies and scanners.
PROXY_AGENTS: Final = {
    "googleimageproxy": "google_image_proxy",
    "ggpht.com": "google_image_proxy",
    "yahoomailproxy": "yahoo_image_proxy",
    "bingpreview": "scanner",
    "barracuda": "scanner",
    "mimecast": "scanner",
    "proofpoint": "scanner",
    "python-requests": "scanner",
    "curl/": "scanner",
}


def machine_reason(
    user_agent: str | None, ip: str | None, occurred_at: datetime, sent_at: datetime | None
) -> str | None:
    """Why this open looks like a machine's (`apple_mpp`, `google_image_proxy`, ...), or
    None for what looks like a person."""
    agent = (user_agent or "").strip()
    if agent == BARE_USER_AGENT or _in_apple_network(ip):
        return "apple_mpp"
    lowered = agent.lower()
    for fragment, reason in PROXY_AGENTS.items():
        if fragment in lowered:
            return reason
    if sent_at is not None and (occurred_at - sent_at).total_seconds() < PREFETCH_SECONDS:
        return "prefetch"
    return None


def _in_apple_network(ip: str | None) -> bool:
    if not ip:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in APPLE_PROXY_NETWORKS)
