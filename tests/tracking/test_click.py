"""The click redirect, through the tracking app: only a link signed for that token in a
sent message is reached (302), anything else is a 400 page and nothing is recorded."""

from urllib.parse import parse_qs, quote, urlsplit

import pytest

from datamailer_core.campaigns.content import PREVIEW_TOKEN
from datamailer_core.campaigns.message import click_signature, click_url
from datamailer_core.security import new_token
from datamailer_core.settings import Settings
from tests.tracking.helpers import BASE, IPHONE_SAFARI, published_events, tracking

SECRET = "test-secret-key"
LINK = "https://shop.example.com/sale?utm_source=mail&item=42#top"


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def test_a_signed_link_redirects_and_publishes_the_click(tracking_settings: Settings) -> None:
    token = new_token()
    async with tracking(tracking_settings) as http:
        response = await http.get(
            path_of(click_url(BASE, SECRET, token, LINK)), headers={"User-Agent": IPHONE_SAFARI}
        )

    assert response.status_code == 302
    assert response.headers["location"] == LINK
    assert "no-store" in response.headers["cache-control"]
    [event] = await published_events(tracking_settings)
    assert (event.event_type, event.tracking_token, event.url) == ("click", token, LINK)
    assert event.metadata["user_agent"] == IPHONE_SAFARI


async def test_the_links_a_campaign_message_carries_redirect(tracking_settings: Settings) -> None:
    # Built by the same code the send path uses, parsed back out of the URL.
    token = new_token()
    url = click_url(BASE, SECRET, token, "http://example.org/a b/ü?x=1&y=2")
    assert parse_qs(urlsplit(url).query)["u"] == ["http://example.org/a b/ü?x=1&y=2"]
    async with tracking(tracking_settings) as http:
        response = await http.get(path_of(url))
    assert response.status_code == 302
    assert response.headers["location"] == "http://example.org/a%20b/%C3%BC?x=1&y=2"


def signed(token: str, url: str) -> str:
    return f"/t/c/{token}?u={quote(url, safe='')}&s={click_signature(SECRET, token, url)}"


def invalid_paths() -> dict[str, str]:
    token, other = new_token(), new_token()
    good = click_signature(SECRET, token, LINK)
    return {
        # A link that was not in the message: the signature is for another one.
        "other-link": f"/t/c/{token}?u={quote('https://evil.example.net/', safe='')}&s={good}",
        # The signature of another recipient's token.
        "other-token": f"/t/c/{other}?u={quote(LINK, safe='')}&s={good}",
        "forged": f"/t/c/{token}?u={quote(LINK, safe='')}&s={'0' * 32}",
        "truncated-signature": f"/t/c/{token}?u={quote(LINK, safe='')}&s={good[:16]}",
        "non-ascii-signature": f"/t/c/{token}?u={quote(LINK, safe='')}&s={quote('é' * 32)}",
        "no-signature": f"/t/c/{token}?u={quote(LINK, safe='')}",
        "no-link": f"/t/c/{token}?s={good}",
        "empty": f"/t/c/{token}",
        # Signed with the right key, but not a web link: never redirected to.
        "javascript": signed(token, "javascript:alert(1)"),
        "data": signed(token, "data:text/html,<script>alert(1)</script>"),
        "scheme-relative": signed(token, "//evil.example.net/"),
        "no-host": signed(token, "https:///path"),
        "bad-ipv6": signed(token, "http://[::1/"),
    }


@pytest.mark.parametrize("case", list(invalid_paths()))
async def test_anything_else_is_a_400_page_and_nothing_is_recorded(
    tracking_settings: Settings, case: str
) -> None:
    async with tracking(tracking_settings) as http:
        response = await http.get(invalid_paths()[case])

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    assert "This link is not valid" in response.text
    assert "location" not in response.headers
    assert await published_events(tracking_settings) == []


async def test_preview_links_redirect_without_recording(tracking_settings: Settings) -> None:
    async with tracking(tracking_settings) as http:
        response = await http.get(signed(PREVIEW_TOKEN, LINK))
    assert response.status_code == 302
    assert response.headers["location"] == LINK
    assert await published_events(tracking_settings) == []


async def test_a_head_request_redirects_without_recording(tracking_settings: Settings) -> None:
    # Link checkers and mail clients' previews send HEAD: not a click.
    async with tracking(tracking_settings) as http:
        response = await http.head(signed(new_token(), LINK))
    assert response.status_code == 302
    assert response.headers["location"] == LINK
    assert await published_events(tracking_settings) == []
