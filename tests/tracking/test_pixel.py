"""The open pixel, through the tracking app: one GIF for every token, never cached,
answered with no database, and a well-formed token's open published to `email-events`."""

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from datamailer_core.security import new_token
from datamailer_core.settings import Settings
from datamailer_tracking.events import EventPublisher
from datamailer_tracking.pixel import PIXEL
from tests.tracking.helpers import IPHONE_SAFARI, published_events, tracking


def assert_pixel(response: httpx.Response) -> None:
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert response.content == PIXEL
    assert len(response.content) == 43
    assert response.content.startswith(b"GIF89a")
    assert "no-store" in response.headers["cache-control"]
    assert "no-cache" in response.headers["cache-control"]
    assert response.headers["pragma"] == "no-cache"
    assert response.headers["expires"] == "0"


async def test_an_open_answers_the_gif_and_publishes_the_token_agent_and_address(
    tracking_settings: Settings,
) -> None:
    token = new_token()
    before = datetime.now(UTC)
    async with tracking(tracking_settings, ip="198.51.100.20") as http:
        response = await http.get(f"/t/o/{token}.gif", headers={"User-Agent": IPHONE_SAFARI})
    assert_pixel(response)

    [event] = await published_events(tracking_settings)
    assert event.event_type == "open"
    assert event.tracking_token == token
    assert event.metadata == {"user_agent": IPHONE_SAFARI, "ip": "198.51.100.20"}
    assert before <= event.occurred_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert event.idempotency_key == event.event_id


@pytest.mark.parametrize(
    "token",
    ["preview-token", "short", "a" * 44, "x" * 42 + "!", "%00" * 15],
    ids=["placeholder", "short", "too-long", "bad-char", "encoded-nul"],
)
async def test_a_malformed_token_gets_the_same_gif_and_publishes_nothing(
    tracking_settings: Settings, token: str
) -> None:
    async with tracking(tracking_settings) as http:
        response = await http.get(f"/t/o/{token}.gif")
    assert_pixel(response)
    assert await published_events(tracking_settings) == []


async def test_the_pixel_does_not_need_the_database(tracking_settings: Settings) -> None:
    # The settings point at a database that does not answer: health says so, the pixel
    # does not care.
    async with tracking(tracking_settings) as http:
        assert (await http.get("/health")).status_code == 503
        response = await asyncio.wait_for(http.get(f"/t/o/{new_token()}.gif"), 2)
    assert_pixel(response)


async def test_shutdown_publishes_every_open_still_held(tracking_settings: Settings) -> None:
    tokens = [new_token() for _ in range(120)]
    async with tracking(tracking_settings) as http:
        responses = await asyncio.gather(*(http.get(f"/t/o/{t}.gif") for t in tokens))
    assert all(r.status_code == 200 for r in responses)

    events = await published_events(tracking_settings)
    assert sorted(e.tracking_token or "" for e in events) == sorted(tokens)
    assert len({e.event_id for e in events}) == len(tokens)


async def test_a_head_request_gets_the_headers_and_records_no_open(tracking_settings: Settings) -> None:
    async with tracking(tracking_settings) as http:
        response = await http.head(f"/t/o/{new_token()}.gif")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert response.headers["content-length"] == "43"
    assert response.content == b""
    assert await published_events(tracking_settings) == []


async def test_a_full_event_queue_delays_requests_but_loses_no_event(tracking_settings: Settings) -> None:
    tokens = [new_token() for _ in range(60)]
    async with tracking(tracking_settings) as http:
        state = http._transport.app.state  # type: ignore[attr-defined]
        await state.events.close()
        # Room for two events: the other requests wait for SQS.
        state.events = events = EventPublisher(state.publisher, capacity=2)
        events.start()
        responses = await asyncio.gather(*(http.get(f"/t/o/{t}.gif") for t in tokens))
        assert events.waited > 0
    assert all(r.status_code == 200 for r in responses)
    assert sorted(e.tracking_token or "" for e in await published_events(tracking_settings)) == sorted(tokens)
