"""The tracking service's default publishing: event bodies written down a pipe to a child
process (`python -m datamailer_tracking.publisher`) that publishes them to moto's SQS.
The other tracking tests publish inline (tests/conftest.py); these run the real child."""

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from asgi_lifespan import LifespanManager

from datamailer_core.campaigns.message import click_url
from datamailer_core.contracts import EmailEventV1, parse_message
from datamailer_core.security import new_token
from datamailer_core.settings import Settings
from datamailer_tracking.events import tracking_event
from datamailer_tracking.main import create_app
from datamailer_tracking.publisher import EventProcess, child_env
from tests.conftest import settings_for
from tests.tracking.conftest import UNREACHABLE_DATABASE
from tests.tracking.helpers import BASE, IPHONE_SAFARI, published_events

LINK = "https://shop.example.com/sale?item=42&utm_source=news"


@pytest.fixture
def process_settings(tracking_settings: Settings) -> Settings:
    return settings_for(
        UNREACHABLE_DATABASE,
        tracking_settings.aws.endpoint_url,
        PUBLIC_BASE_URL="https://mail.example.com",
        SQS_EMAIL_EVENTS_QUEUE_URL=tracking_settings.queues.email_events_url or "",
        TRACKING_EVENT_PUBLISHER="process",
    )


@asynccontextmanager
async def tracking_process(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, EventProcess]]:
    app = create_app(settings)
    # The child's start and drain take seconds on a busy machine.
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=90):
        events = app.state.events
        assert isinstance(events, EventProcess)
        transport = httpx.ASGITransport(app=app, client=("198.51.100.20", 50000))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            yield http, events


async def test_opens_and_clicks_reach_the_queue_through_the_child(process_settings: Settings) -> None:
    token = new_token()
    secret = process_settings.security.secret_key.get_secret_value()
    async with tracking_process(process_settings) as (http, _events):
        opened = await http.get(f"/t/o/{token}.gif", headers={"User-Agent": IPHONE_SAFARI})
        clicked = await http.get(click_url(BASE, secret, token, LINK)[len(BASE) :])
    assert opened.status_code == 200
    assert clicked.status_code == 302

    events = sorted(await published_events(process_settings), key=lambda e: e.event_type)
    assert [(e.event_type, e.tracking_token, e.url) for e in events] == [
        ("click", token, LINK),
        ("open", token, None),
    ]
    assert events[1].metadata == {"user_agent": IPHONE_SAFARI, "ip": "198.51.100.20"}


async def test_shutdown_publishes_every_event_the_child_was_sent(process_settings: Settings) -> None:
    tokens = [new_token() for _ in range(300)]
    async with tracking_process(process_settings) as (http, _events):
        responses = await asyncio.gather(*(http.get(f"/t/o/{t}.gif") for t in tokens))
    assert all(r.status_code == 200 for r in responses)

    events = await published_events(process_settings)
    assert sorted(e.tracking_token or "" for e in events) == sorted(tokens)


async def test_a_killed_child_is_replaced_and_later_events_still_arrive(process_settings: Settings) -> None:
    before, after = new_token(), new_token()
    async with tracking_process(process_settings) as (http, events):
        assert (await http.get(f"/t/o/{before}.gif")).status_code == 200
        first = events.proc
        assert first is not None
        os.kill(first.pid, signal.SIGKILL)
        await first.wait()
        assert (await http.get(f"/t/o/{after}.gif")).status_code == 200
        assert events.restarts == 1
        assert events.proc is not first

    tokens = {e.tracking_token for e in await published_events(process_settings)}
    # What the killed child held may be lost; what came after its death is not.
    assert after in tokens


async def test_the_child_publishes_what_it_read_at_the_end_of_its_input_and_exits_0(
    process_settings: Settings,
) -> None:
    bodies = [tracking_event("open", new_token(), "agent", "192.0.2.1") for _ in range(25)]
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "datamailer_tracking.publisher",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=child_env(process_settings),
    )
    out, _ = await child.communicate("".join(f"{b}\n" for b in bodies).encode())
    assert child.returncode == 0
    report = json.loads(out)
    assert (report["published"], report["failed"]) == (25, 0)
    published = await published_events(process_settings)
    assert sorted(e.event_id for e in published) == sorted(json.loads(b)["event_id"] for b in bodies)


def test_the_child_gets_the_settings_objects_values_not_the_environments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SQS_EMAIL_EVENTS_QUEUE_URL", "http://elsewhere/1/email-events")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://elsewhere")
    settings = settings_for(
        UNREACHABLE_DATABASE, None, SQS_EMAIL_EVENTS_QUEUE_URL="http://here/1/email-events"
    )
    env = child_env(settings)
    assert env["SQS_EMAIL_EVENTS_QUEUE_URL"] == "http://here/1/email-events"
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    assert env["AWS_SECRET_ACCESS_KEY"] == "test"


@pytest.mark.parametrize(
    ("kind", "url", "agent"),
    [
        ("open", None, IPHONE_SAFARI),
        ("click", LINK, 'quote " backslash \\ tab \t bell \x07 accent é'),
        ("open", None, None),
    ],
)
def test_an_event_body_is_what_the_contract_model_writes_and_the_worker_accepts(
    kind: str, url: str | None, agent: str | None
) -> None:
    body = tracking_event(kind, new_token(), agent, "203.0.113.9", url=url)  # type: ignore[arg-type]
    event = parse_message(body, "email-events")
    assert isinstance(event, EmailEventV1)
    assert body == event.model_dump_json()
    assert event.event_type == kind
    assert event.url == url
