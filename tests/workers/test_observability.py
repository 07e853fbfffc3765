"""Observability, end to end: one correlation id in every JSON log line of a transactional
send (API request → queue → worker → SES call), and the worker's `/metrics` and
`/health` listener with counters that move."""

import json
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from datamailer_api.main import create_app
from datamailer_core.contracts import dump_message
from datamailer_core.queues import replay_attributes
from datamailer_core.repositories import deliveries
from datamailer_server.localpg import free_port
from datamailer_workers.deps import open_deps
from datamailer_workers.monitor import serve_monitor
from tests.api.transactional_factories import SEND, put_template, send_body
from tests.factories import TenantFactory
from tests.workers.conftest import WorkerEnv
from tests.workers.helpers import (
    SENDER,
    SENDER_ADDRESS,
    insert_queued,
    load,
    run_poller_until,
    seed_client,
    sent_mail,
)

REQUEST_ID = "req-7f3a9c01-obs"

FAMILIES = (
    "datamailer_http_request_duration_seconds",
    "datamailer_queue_messages_total",
    "datamailer_sends_total",
    "datamailer_ses_throttles_total",
    "datamailer_send_rate",
    "datamailer_idempotency_skips_total",
    "datamailer_dlq_replays_total",
)


def _json_lines(text: str) -> list[dict[str, Any]]:
    entries = []
    for line in text.splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def _sample(metrics_text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text, 0 when absent."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    series = f"{name}{{{wanted}}}" if labels else name
    for line in metrics_text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == series:
            return float(value)
    return 0.0


async def test_one_correlation_id_follows_a_send_from_the_api_request_to_the_ses_call(
    worker_env: WorkerEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = worker_env.settings(LOG_FORMAT="json", LOG_LEVEL="INFO")
    app = create_app(settings)
    async with (
        LifespanManager(app),  # configures JSON logging on stderr, as in production
        open_deps(settings) as deps,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as api,
    ):
        async with deps.sessionmaker() as session:
            tenant = await TenantFactory(session, "test-secret-key").create(senders=[SENDER])
        await deps.sesv2.create_email_identity(EmailIdentity=SENDER_ADDRESS)
        await put_template(api, tenant)
        capsys.readouterr()  # only the send's lines from here on

        response = await api.post(
            SEND, json=send_body(), headers={**tenant.headers, "X-Request-ID": REQUEST_ID}
        )
        assert response.status_code == 202, response.text
        assert response.headers["x-request-id"] == REQUEST_ID
        message_id = response.json()["message"]["id"]

        async def sent() -> bool:
            return (await load(deps, message_id)).status == "sent"

        await run_poller_until(deps, sent)
        [mail] = sent_mail(worker_env.aws_endpoint)

    entries = _json_lines(capsys.readouterr().err)
    accepted = [e for e in entries if e["message"] == "transactional message accepted"]
    handled = [
        e for e in entries if e["logger"] == "datamailer.workers.transactional" and e["message"] == "sent"
    ]
    ses_calls = [e for e in entries if e["logger"] == "datamailer.ses"]
    assert len(accepted) == 1, entries
    assert accepted[0]["transactional_message_id"] == message_id
    assert len(handled) == 1, entries
    assert handled[0]["transactional_message_id"] == message_id
    assert handled[0]["ses_message_id"] == mail.id
    assert len(ses_calls) == 1, entries
    assert ses_calls[0]["message"] == "SES SendEmail accepted"
    assert ses_calls[0]["ses_message_id"] == mail.id
    for entry in (*accepted, *handled, *ses_calls):
        assert entry["correlation_id"] == REQUEST_ID, entry
    # Every line of the flow that names the message carries the same id.
    about_it = [e for e in entries if e.get("transactional_message_id") == message_id]
    assert {e["correlation_id"] for e in about_it} == {REQUEST_ID}


async def test_api_generates_a_request_id_when_the_caller_sends_none_or_a_bad_one(
    worker_env: WorkerEnv,
) -> None:
    app = create_app(worker_env.settings())
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as api,
    ):
        plain = await api.get("/health")
        oversized = await api.get("/health", headers={"X-Request-ID": "x" * 65})
    for response in (plain, oversized):
        rid = response.headers["x-request-id"]
        assert len(rid) == 32
        assert rid != "x" * 65


async def test_worker_metrics_and_health_answer_and_counters_move(worker_env: WorkerEnv) -> None:
    settings = worker_env.settings()
    async with open_deps(settings) as deps:
        row = await insert_queued(deps, await seed_client(deps))
        # As `datamailer dlq replay` puts a message back: the same body, marked.
        await deps.sqs.send_message(
            QueueUrl=deps.publisher.url("transactional-email"),
            MessageBody=dump_message(deliveries.queue_message(row)),
            MessageAttributes=replay_attributes("transactional-email-dlq"),
        )
        async with (
            serve_monitor(deps, 0, "127.0.0.1") as port,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
        ):
            before = (await http.get("/metrics")).text
            for family in FAMILIES:
                assert f"# TYPE {family} " in before, family

            async def sent() -> bool:
                return (await load(deps, row.id)).status == "sent"

            await run_poller_until(deps, sent)

            response = await http.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            after = response.text
            health = await http.get("/health")
            missing = await http.get("/nothing")

    queue = {"queue": "transactional-email"}
    assert _sample(before, "datamailer_queue_messages_total", **queue, outcome="received") == 0
    assert _sample(after, "datamailer_queue_messages_total", **queue, outcome="received") == 1
    assert _sample(after, "datamailer_queue_messages_total", **queue, outcome="acked") == 1
    assert _sample(after, "datamailer_sends_total", stream="transactional", outcome="sent") == 1
    assert _sample(after, "datamailer_dlq_replays_total", **queue) == 1
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "database": "ok"}
    assert missing.status_code == 404


async def test_worker_health_is_503_when_the_database_is_down(worker_env: WorkerEnv) -> None:
    dead = WorkerEnv(
        f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing", worker_env.aws_endpoint
    )
    async with (
        open_deps(dead.settings()) as deps,
        serve_monitor(deps, 0, "127.0.0.1") as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        health = await http.get("/health")
        metrics = await http.get("/metrics")
        wrong_method = await http.post("/metrics")
    assert health.status_code == 503
    assert health.json() == {"status": "unavailable", "database": "unreachable"}
    assert metrics.status_code == 200
    assert wrong_method.status_code == 405
