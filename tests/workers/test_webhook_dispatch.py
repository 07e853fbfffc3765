"""The outbound webhook dispatcher against a real HTTP receiver on 127.0.0.1: Standard
Webhooks signatures that verify with the client's secret, the bearer token, retries
with growing delays (time driven through `next_attempt_at`), failure after the last
attempt, the endpoint disabled after consecutive failures and re-enabled by the
operator, replay, leases; and the outbox writes of the event sources."""

import asyncio
import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from standardwebhooks import Webhook

from datamailer_core.models import Campaign, TransactionalMessage, WebhookDelivery, WebhookEndpoint
from datamailer_core.repositories import deliveries, transactional, webhooks
from datamailer_core.repositories.audience import ContactInput, apply_contacts
from datamailer_core.repositories.contacts import normalize_email
from datamailer_core.repositories.webhooks import EndpointInput
from datamailer_core.webhooks import BACKOFF_SECONDS, DISABLE_AFTER_FAILURES, MAX_ATTEMPTS, generate_secret
from datamailer_server import ops
from datamailer_workers.deps import WorkerDeps
from datamailer_workers.handlers.events import handle_email_event
from datamailer_workers.scheduler import default_jobs, run_once
from datamailer_workers.webhook_dispatch import dispatch_webhooks
from tests.workers.conftest import WorkerEnv
from tests.workers.helpers import Seeded, insert_queued, seed_client
from tests.workers.test_commands import run_cli
from tests.workers.test_email_events import LINK, sent_campaign
from tests.workers.test_email_events import event as email_event


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    status: int = 200
    extra_headers: dict[str, str] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            state.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(state.status)
            for name, value in state.extra_headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


async def add_endpoint(
    deps: WorkerDeps, seeded: Seeded, url: str, *, bearer_token: str | None = None
) -> tuple[int, str]:
    async with deps.sessionmaker() as session, session.begin():
        ((endpoint, secret),) = await webhooks.replace_endpoints(
            session, seeded.client_id, [EndpointInput(url, None, bearer_token)]
        )
    assert secret is not None
    return endpoint.id, secret


async def set_endpoints(deps: WorkerDeps, seeded: Seeded, *urls: str) -> None:
    async with deps.sessionmaker() as session, session.begin():
        await webhooks.replace_endpoints(session, seeded.client_id, [EndpointInput(u, None) for u in urls])


async def record(deps: WorkerDeps, seeded: Seeded, event_type: str = "message.opened", **data: Any) -> None:
    async with deps.sessionmaker() as session, session.begin():
        await webhooks.record_event(session, client_id=seeded.client_id, event_type=event_type, data=data)


async def outbox(deps: WorkerDeps) -> list[WebhookDelivery]:
    async with deps.sessionmaker() as session:
        rows = await session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id))
        return list(rows.all())


async def endpoint_of(deps: WorkerDeps, endpoint_id: int) -> WebhookEndpoint:
    async with deps.sessionmaker() as session:
        found = await session.get(WebhookEndpoint, endpoint_id)
    assert found is not None
    return found


async def make_due(deps: WorkerDeps) -> None:
    """Time passes: every scheduled retry is due now."""
    async with deps.sessionmaker() as session, session.begin():
        await session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.status == "pending")
            .values(next_attempt_at=func.now() - timedelta(seconds=1))
        )


def expected_signature(secret: str, received: Received) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = (
        f"{received.headers['webhook-id']}.{received.headers['webhook-timestamp']}.".encode() + received.body
    )
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


async def test_a_delivery_is_signed_carries_the_token_and_is_recorded(
    deps: WorkerDeps, receiver: Receiver
) -> None:
    seeded = await seed_client(deps, verify_sender=False)
    endpoint_id, secret = await add_endpoint(deps, seeded, receiver.url, bearer_token="client-token")
    await record(deps, seeded, "contact.hard_bounced", email="ada@example.com")

    assert await dispatch_webhooks(deps) == 1

    (got,) = receiver.requests
    (row,) = await outbox(deps)
    assert got.path == "/hook"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["authorization"] == "Bearer client-token"
    assert got.headers["webhook-id"] == str(row.event_id)
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
    assert got.headers["webhook-signature"] == expected_signature(secret, got)
    verified = Webhook(secret).verify(got.body, got.headers)
    assert verified == {
        "id": str(row.event_id),
        "type": "contact.hard_bounced",
        "timestamp": row.created_at.isoformat(),
        "data": {"email": "ada@example.com"},
    }
    assert datetime.fromisoformat(verified["timestamp"]).tzinfo is not None
    # Another secret does not verify.
    with pytest.raises(Exception, match="signature"):
        Webhook(generate_secret()).verify(got.body, got.headers)

    assert (row.status, row.attempt_count, row.last_status_code, row.lease_owner) == (
        "delivered",
        1,
        200,
        None,
    )
    assert row.delivered_at is not None
    (attempt,) = row.attempts
    assert (attempt["status_code"], attempt["error"]) == (200, None)
    assert attempt["duration_ms"] >= 0
    assert datetime.fromisoformat(attempt["at"])
    endpoint = await endpoint_of(deps, endpoint_id)
    assert (endpoint.failure_count, endpoint.status) == (0, "active")
    assert endpoint.last_success_at is not None
    # Delivered once: the next run finds nothing.
    assert await dispatch_webhooks(deps) == 0
    assert len(receiver.requests) == 1


async def test_no_authorization_header_without_a_token(deps: WorkerDeps, receiver: Receiver) -> None:
    seeded = await seed_client(deps, verify_sender=False)
    await add_endpoint(deps, seeded, receiver.url)
    await record(deps, seeded)

    assert await dispatch_webhooks(deps) == 1
    assert "authorization" not in receiver.requests[0].headers


async def test_a_failing_receiver_sees_retries_with_growing_delays_then_the_delivery_fails(
    deps: WorkerDeps, receiver: Receiver
) -> None:
    receiver.status = 500
    seeded = await seed_client(deps, verify_sender=False)
    endpoint_id, secret = await add_endpoint(deps, seeded, receiver.url)
    await record(deps, seeded)

    delays: list[float] = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert await dispatch_webhooks(deps) == 1
        # Not due yet: nothing is attempted before its time.
        assert await dispatch_webhooks(deps) == 0
        (row,) = await outbox(deps)
        assert row.attempt_count == attempt
        if attempt < MAX_ATTEMPTS:
            assert row.status == "pending"
            last = datetime.fromisoformat(row.attempts[-1]["at"])
            delays.append((row.next_attempt_at - last).total_seconds())
            await make_due(deps)

    assert row.status == "failed"
    assert [round(d / 60) for d in delays] == [round(s / 60) for s in BACKOFF_SECONDS]
    assert delays == sorted(delays)
    assert delays[0] < 120
    assert 11.9 * 3600 < delays[-1] <= 12 * 3600 + 60
    assert [a["status_code"] for a in row.attempts] == [500] * MAX_ATTEMPTS
    assert {a["error"] for a in row.attempts} == {"HTTP 500"}
    assert (row.last_status_code, row.last_error) == (500, "HTTP 500")
    # The same event id every time, freshly signed each time.
    assert len(receiver.requests) == MAX_ATTEMPTS
    assert {r.headers["webhook-id"] for r in receiver.requests} == {str(row.event_id)}
    for got in receiver.requests:
        assert got.headers["webhook-signature"] == expected_signature(secret, got)
    await make_due(deps)
    assert await dispatch_webhooks(deps) == 0
    endpoint = await endpoint_of(deps, endpoint_id)
    assert (endpoint.failure_count, endpoint.status, endpoint.last_error) == (
        MAX_ATTEMPTS,
        "active",
        "HTTP 500",
    )


async def test_consecutive_failures_disable_the_endpoint_until_the_operator_enables_it(
    deps: WorkerDeps, worker_env: WorkerEnv, receiver: Receiver
) -> None:
    receiver.status = 503
    seeded = await seed_client(deps, verify_sender=False)
    endpoint_id, _ = await add_endpoint(deps, seeded, receiver.url)
    for n in range(DISABLE_AFTER_FAILURES + 3):
        await record(deps, seeded, n=n)

    for _ in range(10):
        if not await dispatch_webhooks(deps):
            break
        await make_due(deps)

    assert len(receiver.requests) == DISABLE_AFTER_FAILURES
    endpoint = await endpoint_of(deps, endpoint_id)
    assert (endpoint.status, endpoint.failure_count) == ("disabled", DISABLE_AFTER_FAILURES)
    assert endpoint.disabled_at is not None
    rows = await outbox(deps)
    assert {r.status for r in rows} == {"pending"}
    assert sum(r.attempt_count for r in rows) == DISABLE_AFTER_FAILURES
    # Nothing more is attempted, and new events are not queued for it.
    await record(deps, seeded, n=99)
    await make_due(deps)
    assert await dispatch_webhooks(deps) == 0
    assert len(receiver.requests) == DISABLE_AFTER_FAILURES
    assert len(await outbox(deps)) == len(rows)

    settings = worker_env.settings()
    assert await ops.set_webhooks_enabled(settings, seeded.client_slug, True) == [(receiver.url, True)]
    assert await ops.set_webhooks_enabled(settings, seeded.client_slug, True) == [(receiver.url, False)]
    receiver.status = 204
    await make_due(deps)
    total = 0
    while count := await dispatch_webhooks(deps):
        total += count
    assert total == len(rows)
    assert {r.status for r in await outbox(deps)} == {"delivered"}
    endpoint = await endpoint_of(deps, endpoint_id)
    assert (endpoint.status, endpoint.failure_count, endpoint.disabled_at) == ("active", 0, None)


async def test_an_operator_can_disable_one_endpoint(deps: WorkerDeps, worker_env: WorkerEnv) -> None:
    seeded = await seed_client(deps, verify_sender=False)
    await set_endpoints(deps, seeded, "https://a.example.com/hook", "https://b.example.com/hook")
    settings = worker_env.settings()

    changed = await ops.set_webhooks_enabled(
        settings, seeded.client_slug, False, "https://b.example.com/hook"
    )

    assert changed == [("https://b.example.com/hook", True)]
    async with deps.sessionmaker() as session:
        statuses = dict((await session.execute(select(WebhookEndpoint.url, WebhookEndpoint.status))).all())
    assert statuses == {"https://a.example.com/hook": "active", "https://b.example.com/hook": "disabled"}
    with pytest.raises(Exception, match="no such webhook endpoint"):
        await ops.set_webhooks_enabled(settings, seeded.client_slug, True, "https://c.example.com/hook")


async def test_webhooks_commands_enable_and_disable_idempotently(
    deps: WorkerDeps, worker_env: WorkerEnv, tmp_path: Path
) -> None:
    seeded = await seed_client(deps, verify_sender=False)
    await set_endpoints(deps, seeded, "https://a.example.com/hook")
    env = worker_env.environ()

    def cli(*args: str) -> tuple[int, str, str]:
        done = run_cli(env, tmp_path, "webhooks", *args)
        return done.returncode, done.stdout, done.stderr

    assert cli("disable", seeded.client_slug) == (0, "https://a.example.com/hook: disabled\n", "")
    assert cli("disable", seeded.client_slug)[1] == "https://a.example.com/hook: disabled (already)\n"
    assert cli("enable", seeded.client_slug, "--url", "https://a.example.com/hook")[:2] == (
        0,
        "https://a.example.com/hook: enabled\n",
    )
    for args in (("enable", "nosuch"), ("enable", seeded.client_slug, "--url", "https://b.example.com/")):
        code, out, err = cli(*args)
        assert (code, out) == (1, "")
        assert err.startswith("error: ")
        assert err.count("\n") == 1
    assert (await endpoint_of_url(deps, "https://a.example.com/hook")).status == "active"


async def endpoint_of_url(deps: WorkerDeps, url: str) -> WebhookEndpoint:
    async with deps.sessionmaker() as session:
        found = await session.scalar(select(WebhookEndpoint).where(WebhookEndpoint.url == url))
    assert found is not None
    return found


async def test_a_redirect_is_not_followed(deps: WorkerDeps, receiver: Receiver) -> None:
    receiver.status = 302
    receiver.extra_headers = {"location": receiver.url + "/elsewhere"}
    seeded = await seed_client(deps, verify_sender=False)
    await add_endpoint(deps, seeded, receiver.url)
    await record(deps, seeded)

    assert await dispatch_webhooks(deps) == 1

    assert [r.path for r in receiver.requests] == ["/hook"]
    (row,) = await outbox(deps)
    assert (row.status, row.last_status_code, row.last_error) == ("pending", 302, "HTTP 302")


async def test_an_unreachable_receiver_is_a_recorded_failure(deps: WorkerDeps, receiver: Receiver) -> None:
    seeded = await seed_client(deps, verify_sender=False)
    await add_endpoint(deps, seeded, "http://127.0.0.1:9/nothing-listens")
    await record(deps, seeded)

    assert await dispatch_webhooks(deps) == 1

    (row,) = await outbox(deps)
    assert (row.status, row.last_status_code) == ("pending", None)
    assert row.attempts[0]["error"].startswith("ConnectError")


async def test_replay_delivers_a_failed_event_again_with_the_same_id(
    deps: WorkerDeps, receiver: Receiver
) -> None:
    seeded = await seed_client(deps, verify_sender=False)
    await add_endpoint(deps, seeded, receiver.url)
    await record(deps, seeded)
    async with deps.sessionmaker() as session, session.begin():
        await session.execute(update(WebhookDelivery).values(status="failed", attempt_count=MAX_ATTEMPTS))
    assert await dispatch_webhooks(deps) == 0
    (row,) = await outbox(deps)

    async with deps.sessionmaker() as session, session.begin():
        await webhooks.replay(session, seeded.client_id, row.event_id)
    assert await dispatch_webhooks(deps) == 1

    (got,) = receiver.requests
    assert got.headers["webhook-id"] == str(row.event_id)
    (row,) = await outbox(deps)
    assert (row.status, row.attempt_count) == ("delivered", 1)


async def test_concurrent_dispatchers_deliver_each_event_once(deps: WorkerDeps, receiver: Receiver) -> None:
    seeded = await seed_client(deps, verify_sender=False)
    await set_endpoints(deps, seeded, *(f"{receiver.url}/{n}" for n in range(4)))
    for n in range(6):
        await record(deps, seeded, n=n)

    total = 0
    while counts := [c for c in await asyncio.gather(*(dispatch_webhooks(deps) for _ in range(3))) if c]:
        total += sum(counts)

    assert total == 24
    assert len(receiver.requests) == 24
    assert len({(r.path, r.headers["webhook-id"]) for r in receiver.requests}) == 24
    assert {r.status for r in await outbox(deps)} == {"delivered"}


async def test_an_expired_lease_is_claimed_again_and_a_live_one_is_not(
    deps: WorkerDeps, receiver: Receiver
) -> None:
    seeded = await seed_client(deps, verify_sender=False)
    await add_endpoint(deps, seeded, receiver.url)
    await record(deps, seeded)
    async with deps.sessionmaker() as session, session.begin():
        (claimed,) = await webhooks.claim_due(
            session, owner="dead-worker", limit=10, per_endpoint=5, lease_seconds=60
        )

    assert await dispatch_webhooks(deps) == 0  # leased elsewhere
    async with deps.sessionmaker() as session, session.begin():
        await session.execute(
            update(WebhookDelivery).values(lease_expires_at=func.now() - timedelta(seconds=1))
        )
    assert await dispatch_webhooks(deps) == 1
    # The dead worker's late result is not recorded over the new one.
    async with deps.sessionmaker() as session, session.begin():
        assert not await webhooks.record_attempt(
            session, claimed, "dead-worker", webhooks.Attempt(500, "late", 1)
        )
    (row,) = await outbox(deps)
    assert (row.status, row.attempt_count) == ("delivered", 1)


async def test_the_scheduler_runs_the_dispatcher(deps: WorkerDeps, receiver: Receiver) -> None:
    seeded = await seed_client(deps, verify_sender=False)
    await add_endpoint(deps, seeded, receiver.url)
    await record(deps, seeded)

    results = await run_once(deps, default_jobs(deps.settings))

    assert results["webhooks.dispatch"] == 1
    assert len(receiver.requests) == 1


# --- The event sources' outbox writes -------------------------------------------------


async def test_unsubscribe_and_resubscribe_are_queued_by_the_audience_engine(deps: WorkerDeps) -> None:
    seeded = await seed_client(deps, verify_sender=False)
    await add_endpoint(deps, seeded, "https://a.example.com/hook")
    email = "Ada@Example.com"

    async def apply(**values: Any) -> None:
        item = ContactInput(email=email, normalized=normalize_email(email), source="api", **values)
        async with deps.sessionmaker() as session, session.begin():
            await apply_contacts(
                session, audience_id=seeded.audience_id, client_id=seeded.client_id, items=[item]
            )

    await apply(status="subscribed")  # a first subscribe is not an event here
    await apply(status="unsubscribed", reason="too_many")
    await apply(status="unsubscribed", reason="again")  # no change, no event
    await apply(status="subscribed")

    rows = await outbox(deps)
    assert [(r.event_type, r.payload["scope"], r.payload["email"]) for r in rows] == [
        ("subscription.unsubscribed", "client", email),
        ("subscription.resubscribed", "client", email),
    ]
    assert rows[0].payload["reason"] == "too_many"
    assert rows[0].payload["audience_id"] == seeded.audience_id


async def test_transactional_skipped_and_failed_are_queued(deps: WorkerDeps) -> None:
    seeded = await seed_client(deps, verify_sender=False)
    await add_endpoint(deps, seeded, "https://a.example.com/hook")
    failing = await insert_queued(deps, seeded, to="fail@example.com", idempotency_key="k-fail")
    blocked = await insert_queued(deps, seeded, to="blocked@example.com", idempotency_key="k-blocked")
    async with deps.sessionmaker() as session, session.begin():
        claim = await deliveries.claim_transactional(
            session,
            failing.id,
            client_id=seeded.client_id,
            idempotency_key="k-fail",
            owner="w",
            lease_seconds=60,
            expired_policy="fail",
        )
        assert claim.outcome == "claimed"
        assert await deliveries.record_failed(session, failing.id, "w", "ses_rejected", "MessageRejected")
        row = await session.get(TransactionalMessage, blocked.id)
        assert row is not None
        await transactional.append_message_event(session, row, "skipped", {"reason": "hard_bounce"})
        await transactional.append_message_event(session, row, "queued", {})

    rows = await outbox(deps)
    assert [(r.event_type, r.payload["email"], r.payload["reason"]) for r in rows] == [
        ("transactional.failed", "fail@example.com", "ses_rejected"),
        ("transactional.skipped", "blocked@example.com", "hard_bounce"),
    ]
    assert rows[0].payload["message_id"] == failing.id
    assert rows[0].payload["idempotency_key"] == "k-fail"
    assert rows[0].payload["error"] == "MessageRejected"


async def test_events_of_another_client_are_not_queued_for_this_one(deps: WorkerDeps) -> None:
    seeded = await seed_client(deps, verify_sender=False)
    rival = await seed_client(deps, verify_sender=False, client="rival")
    await add_endpoint(deps, seeded, "https://a.example.com/hook")

    await record(deps, rival, n=1)
    await record(deps, seeded, n=2)

    assert [(r.client_id, r.payload) for r in await outbox(deps)] == [(seeded.client_id, {"n": 2})]


async def test_opens_and_clicks_are_queued_once_by_the_email_events_handler(deps: WorkerDeps) -> None:
    campaign_id, (token,) = await sent_campaign(deps, 1)
    async with deps.sessionmaker() as session, session.begin():
        campaign = await session.get(Campaign, campaign_id)
        assert campaign is not None
        await webhooks.replace_endpoints(
            session, campaign.client_id, [EndpointInput("https://a.example.com/hook", None)]
        )
    opened = email_event("open", token)

    await handle_email_event(opened, deps)
    await handle_email_event(opened, deps)  # redelivered: no second webhook
    await handle_email_event(email_event("click", token), deps)

    rows = await outbox(deps)
    assert [(r.event_type, r.payload["campaign_id"]) for r in rows] == [
        ("message.opened", campaign_id),
        ("message.clicked", campaign_id),
    ]
    assert rows[0].payload["machine"] is False
    assert rows[1].payload["url"] == LINK


def test_backoff_runs_from_a_minute_to_twelve_hours_over_eight_attempts() -> None:
    assert MAX_ATTEMPTS == 8
    assert BACKOFF_SECONDS[0] == 60
    assert BACKOFF_SECONDS[-1] == 12 * 3600
    assert list(BACKOFF_SECONDS) == sorted(set(BACKOFF_SECONDS))
