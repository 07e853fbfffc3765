"""Mailchimp one-way sync, end to end: the client API configures it, contact changes
write the outbox, and the scheduler job pushes it to a local HTTP server that answers
like Mailchimp's Marketing API (basic auth, JSON bodies, problem-JSON errors)."""

import base64
import hashlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select, update

from datamailer_api.main import create_app
from datamailer_core.models import MailchimpAccount, MailchimpSync
from datamailer_core.repositories import mailchimp
from datamailer_core.repositories.contacts import record_mailbox_fact
from datamailer_workers.deps import WorkerDeps, open_deps
from datamailer_workers.mailchimp_sync import dispatch_mailchimp
from datamailer_workers.scheduler import default_jobs
from tests.factories import Tenant, TenantFactory
from tests.workers.conftest import WorkerEnv

KEY = "0123456789abcdef0123456789abcdef-us21"
LIST = "a1b2c3d4e5"
CONFIG = "/api/client/mailchimp"
MAPPINGS = "/api/client/mailchimp/tag-mappings"


def md5(email: str) -> str:
    return hashlib.md5(email.encode()).hexdigest()


@dataclass
class Call:
    method: str
    path: str
    body: Any
    password: str


@dataclass
class FakeMailchimp:
    url: str = ""
    # Statuses to answer with, one per request, before answering normally.
    script: list[int] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)


PROBLEMS = {
    400: ("Invalid Resource", "Please provide a valid email address."),
    401: (
        "API Key Invalid",
        "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
    ),
    429: ("Too Many Requests", "You have exceeded the limit of 10 simultaneous connections."),
    500: ("Internal Server Error", "An unexpected internal error has occurred."),
    503: ("Service Unavailable", "Please try again later."),
}


@pytest.fixture
def fake_mailchimp() -> Iterator[FakeMailchimp]:
    state = FakeMailchimp()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict[str, Any] | None, content_type: str) -> None:
            raw = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            if raw:
                self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _handle(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            scheme, _, encoded = self.headers.get("authorization", "").partition(" ")
            password = base64.b64decode(encoded).decode().partition(":")[2] if scheme == "Basic" else ""
            body: Any = json.loads(raw) if raw else None
            state.calls.append(Call(self.command, self.path, body, password))
            status = state.script.pop(0) if state.script else (401 if password != KEY else 0)
            if status:
                title, detail = PROBLEMS[status]
                problem = {
                    "type": "https://mailchimp.com/developer/marketing/docs/errors/",
                    "title": title,
                    "status": status,
                    "detail": detail,
                    "instance": "995c5cb0-3280-4a6e-808b-3b096d0bb219",
                }
                self._answer(status, problem, "application/problem+json")
            elif self.command == "PUT":
                member = {
                    "id": self.path.rsplit("/", 1)[-1],
                    "email_address": body["email_address"],
                    "status": body.get("status", body["status_if_new"]),
                    "list_id": LIST,
                }
                self._answer(200, member, "application/json")
            else:  # tags, delete-permanent
                self._answer(204, None, "")

        do_PUT = do_POST = _handle  # noqa: N815 - http.server's names

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/3.0"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@dataclass
class Env:
    api: httpx.AsyncClient
    deps: WorkerDeps
    tenant: Tenant
    other: Tenant
    mailchimp: FakeMailchimp

    async def configure(self, **body: Any) -> dict[str, Any]:
        response = await self.api.put(
            CONFIG,
            json={"api_key": KEY, "list_id": LIST, "enabled": True, **body},
            headers=self.tenant.headers,
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def contact(self, tenant: Tenant | None = None, **body: Any) -> httpx.Response:
        tenant = tenant or self.tenant
        payload = {"audience": tenant.audience_slug, "client": tenant.client_slug, **body}
        response = await self.api.post("/api/contacts", json=payload, headers=tenant.headers)
        assert response.status_code == 200, response.text
        return response

    async def syncs(self) -> list[MailchimpSync]:
        async with self.deps.sessionmaker() as session:
            return list((await session.scalars(select(MailchimpSync).order_by(MailchimpSync.id))).all())

    async def account(self, tenant: Tenant | None = None) -> MailchimpAccount | None:
        async with self.deps.sessionmaker() as session:
            return await mailchimp.get_account(session, (tenant or self.tenant).scope.client.id)

    async def make_due(self) -> None:
        async with self.deps.sessionmaker() as session, session.begin():
            await session.execute(
                update(MailchimpSync)
                .where(MailchimpSync.status == "pending")
                .values(next_attempt_at=func.now() - timedelta(seconds=1))
            )


@pytest.fixture
async def env(worker_env: WorkerEnv, fake_mailchimp: FakeMailchimp) -> AsyncIterator[Env]:
    settings = worker_env.settings(MAILCHIMP_BASE_URL=fake_mailchimp.url)
    app = create_app(settings)
    async with (
        LifespanManager(app),
        open_deps(settings) as deps,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as api,
    ):
        async with deps.sessionmaker() as session:
            factory = TenantFactory(session, "test-secret-key")
            tenant = await factory.create()
            other = await factory.create(organization="globex", audience="news", client="rival")
        yield Env(api, deps, tenant, other, fake_mailchimp)


async def test_configuring_returns_a_status_without_the_key(env: Env) -> None:
    body = await env.configure()

    assert body == {
        "client": "app",
        "enabled": True,
        "configured": True,
        "list_id": LIST,
        "datacenter": "us21",
        "api_key_set": True,
    }
    # Only the fields sent change.
    response = await env.api.put(CONFIG, json={"enabled": False}, headers=env.tenant.headers)
    assert response.json() | {"enabled": True} == body
    # Set-only, as in Datamailer: no GET.
    got = await env.api.get(CONFIG, headers=env.tenant.headers)
    assert got.status_code == 405
    assert KEY not in got.text
    assert KEY[:-5] not in got.text


async def test_a_contact_upsert_puts_the_member_by_subscriber_hash(env: Env) -> None:
    await env.configure()
    await env.contact(email="Ada@Example.com ", status="subscribed")

    assert await dispatch_mailchimp(env.deps) == 1

    (call,) = env.mailchimp.calls
    assert call.method == "PUT"
    assert call.path == f"/3.0/lists/{LIST}/members/{md5('ada@example.com')}"
    assert call.body == {
        "email_address": "Ada@Example.com",
        "status_if_new": "subscribed",
        "status": "subscribed",
    }
    assert call.password == KEY
    (sync,) = await env.syncs()
    assert sync.status == "delivered"
    assert sync.attempt_count == 1
    assert sync.last_status_code == 200


async def test_a_pending_contact_is_added_as_transactional_and_an_unsubscribe_is_pushed(env: Env) -> None:
    await env.configure()
    await env.contact(email="ada@example.com")
    await dispatch_mailchimp(env.deps)
    response = await env.api.post(
        "/api/subscriptions/unsubscribe",
        json={"email": "ada@example.com", "audience": "newsletter", "client": "app", "scope": "client"},
        headers=env.tenant.headers,
    )
    assert response.status_code == 200, response.text
    await dispatch_mailchimp(env.deps)

    first, second = env.mailchimp.calls
    # Not opted in: added without marketing, and an existing member's status is kept.
    assert first.body == {"email_address": "ada@example.com", "status_if_new": "transactional"}
    assert second.body == {
        "email_address": "ada@example.com",
        "status_if_new": "unsubscribed",
        "status": "unsubscribed",
    }


async def test_changes_queued_before_a_dispatch_push_the_contact_as_it_is_then(env: Env) -> None:
    await env.configure()
    await env.contact(email="ada@example.com", status="subscribed")
    await env.contact(email="ada@example.com", status="unsubscribed")

    assert await dispatch_mailchimp(env.deps) == 2

    assert [c.body.get("status") for c in env.mailchimp.calls] == ["unsubscribed", "unsubscribed"]


async def test_tag_mappings_turn_contact_tags_into_mailchimp_tags(env: Env) -> None:
    await env.configure()
    response = await env.api.put(
        MAPPINGS,
        json={
            "audience": "newsletter",
            "mappings": [
                {"list_key": "vip", "tag": "VIP"},
                {"list_key": "<all>", "tag": "Everyone"},
                {"list_key": "beta", "tag": "Beta", "enabled": False},
            ],
        },
        headers=env.tenant.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["mappings"] == [
        {"audience": "newsletter", "list_key": "<all>", "tag": "Everyone", "enabled": True},
        {"audience": "newsletter", "list_key": "beta", "tag": "Beta", "enabled": False},
        {"audience": "newsletter", "list_key": "vip", "tag": "VIP", "enabled": True},
    ]

    created = await env.contact(email="ada@example.com", status="subscribed", tags=["vip", "beta"])
    await dispatch_mailchimp(env.deps)
    member = f"/3.0/lists/{LIST}/members/{md5('ada@example.com')}"
    put, tags = env.mailchimp.calls
    assert (put.method, put.path) == ("PUT", member)
    assert (tags.method, tags.path) == ("POST", f"{member}/tags")
    assert tags.body == {
        "tags": [{"name": "Everyone", "status": "active"}, {"name": "VIP", "status": "active"}]
    }

    contact_id = created.json()["contact_id"]
    removed = await env.api.delete(
        f"/api/contacts/{contact_id}/tags/vip?audience=newsletter&client=app", headers=env.tenant.headers
    )
    assert removed.status_code == 200, removed.text
    env.mailchimp.calls.clear()
    assert await dispatch_mailchimp(env.deps) == 1

    _, tags = env.mailchimp.calls
    # `beta` (its mapping disabled) is still there, so `<all>` stays.
    assert tags.body == {"tags": [{"name": "VIP", "status": "inactive"}]}


async def test_a_mapping_covers_its_recipient_list_subtree(env: Env) -> None:
    await env.configure()
    await env.api.put(
        MAPPINGS,
        json={"audience": "newsletter", "mappings": [{"list_key": "course:2025", "tag": "Course 2025"}]},
        headers=env.tenant.headers,
    )
    created = await env.contact(email="ada@example.com", status="subscribed")
    contact_id = created.json()["contact_id"]
    await dispatch_mailchimp(env.deps)
    env.mailchimp.calls.clear()

    # The recipient-list code records a join in its own transaction.
    async with env.deps.sessionmaker() as session, session.begin():
        for key in ("course:2025:cohort-a", "course:20250"):
            await mailchimp.record_changes(
                session,
                client_id=env.tenant.scope.client.id,
                audience_id=env.tenant.scope.audience.id,
                changes=[mailchimp.MemberChange(contact_id, [key], (), [key])],
                tags_only=True,
            )
    await dispatch_mailchimp(env.deps)

    _, tags = env.mailchimp.calls
    assert tags.body == {"tags": [{"name": "Course 2025", "status": "active"}]}


@pytest.mark.parametrize("status", [429, 503])
async def test_a_throttled_or_failing_mailchimp_is_retried_with_backoff(env: Env, status: int) -> None:
    await env.configure()
    env.mailchimp.script = [status]
    await env.contact(email="ada@example.com", status="subscribed")

    await dispatch_mailchimp(env.deps)
    (sync,) = await env.syncs()
    assert sync.status == "pending"
    assert sync.attempt_count == 1
    assert sync.last_status_code == status
    assert sync.last_error is not None
    assert sync.last_error.startswith(f"HTTP {status}: {PROBLEMS[status][0]}")
    # Not before its backoff.
    assert await dispatch_mailchimp(env.deps) == 0

    await env.make_due()
    await dispatch_mailchimp(env.deps)
    (sync,) = await env.syncs()
    assert sync.status == "delivered"
    assert sync.attempt_count == 2
    assert [c.method for c in env.mailchimp.calls] == ["PUT", "PUT"]


async def test_an_unreachable_mailchimp_is_retried(env: Env, worker_env: WorkerEnv) -> None:
    await env.configure()
    await env.contact(email="ada@example.com", status="subscribed")
    async with open_deps(worker_env.settings(MAILCHIMP_BASE_URL="http://127.0.0.1:9/3.0")) as down:
        await dispatch_mailchimp(down)
    (sync,) = await env.syncs()
    assert sync.status == "pending"
    assert sync.last_status_code is None
    assert sync.last_error is not None
    assert "Connect" in sync.last_error


async def test_a_rejected_member_fails_for_good_with_the_reason(env: Env) -> None:
    await env.configure()
    env.mailchimp.script = [400]
    await env.contact(email="ada@example.com", status="subscribed")

    await dispatch_mailchimp(env.deps)
    await env.make_due()
    assert await dispatch_mailchimp(env.deps) == 0

    (sync,) = await env.syncs()
    assert sync.status == "failed"
    assert sync.attempt_count == 1
    assert sync.last_status_code == 400
    assert sync.last_error == "HTTP 400: Invalid Resource: Please provide a valid email address."
    assert len(env.mailchimp.calls) == 1


async def test_a_wrong_key_fails_and_the_key_never_leaks(env: Env) -> None:
    wrong = "ffffffffffffffffffffffffffffffff-us21"
    responses = [
        await env.api.put(
            CONFIG, json={"api_key": wrong, "list_id": LIST, "enabled": True}, headers=env.tenant.headers
        )
    ]
    responses.append(await env.contact(email="ada@example.com", status="subscribed"))
    await dispatch_mailchimp(env.deps)
    responses.append(await env.api.get(CONFIG, headers=env.tenant.headers))
    responses.append(await env.api.put(CONFIG, json={"api_key": "nope"}, headers=env.tenant.headers))
    responses.append(await env.api.get("/openapi.json"))

    (sync,) = await env.syncs()
    assert sync.status == "failed"
    assert sync.last_status_code == 401
    assert env.mailchimp.calls[0].password == wrong
    for response in responses:
        assert wrong not in response.text
        assert "ffffffffffff" not in response.text
    assert wrong not in (sync.last_error or "")


async def test_another_client_cannot_see_or_change_the_configuration(env: Env) -> None:
    await env.configure()
    await env.api.put(
        MAPPINGS,
        json={"audience": "newsletter", "mappings": [{"list_key": "vip", "tag": "VIP"}]},
        headers=env.tenant.headers,
    )

    forbidden = await env.api.put(CONFIG, json={"client": "app", "enabled": False}, headers=env.other.headers)
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["fields"] == {"client": "forbidden"}
    foreign = await env.api.put(
        MAPPINGS, json={"audience": "newsletter", "mappings": []}, headers=env.other.headers
    )
    assert foreign.status_code == 400
    assert foreign.json()["error"]["fields"] == {"audience": "not_found"}
    own = await env.api.put(CONFIG, json={"enabled": True}, headers=env.other.headers)
    assert own.json() == {
        "client": "rival",
        "enabled": True,
        "configured": False,
        "list_id": "",
        "datacenter": "",
        "api_key_set": False,
    }

    account = await env.account()
    assert account is not None
    assert account.enabled
    assert account.api_key == KEY
    # The other client's contacts go nowhere near this client's Mailchimp.
    await env.contact(env.other, email="bob@example.com", status="subscribed", tags=["vip"])
    assert await dispatch_mailchimp(env.deps) == 0
    assert env.mailchimp.calls == []


@pytest.mark.parametrize(
    ("path", "body", "fields"),
    [
        (CONFIG, {"api_key": "0123456789abcdef"}, {"api_key": "missing_datacenter_suffix"}),
        (CONFIG, {"api_key": "0123 4567-us21"}, {"api_key": "invalid"}),
        (CONFIG, {"list_id": "a b", "enabled": False}, {"list_id": "invalid"}),
        (CONFIG, {"enabled": "yes"}, {"enabled": "invalid"}),
        (CONFIG, {"enabled": None}, {"enabled": "invalid"}),
        (CONFIG, {"api_key": 5}, {"api_key": "invalid"}),
        (CONFIG, {"list_ids": "x"}, {"list_ids": "unknown_field"}),
        (MAPPINGS, {"audience": "newsletter", "mappings": [{"list_key": "a::b", "tag": "T"}]}, None),
        (MAPPINGS, {"audience": "newsletter", "mappings": [{"list_key": "a", "tag": " "}]}, None),
        (
            MAPPINGS,
            {
                "audience": "newsletter",
                "mappings": [{"list_key": "a", "tag": "T"}, {"list_key": "a", "tag": "T"}],
            },
            {"mappings.1": "duplicate"},
        ),
        (MAPPINGS, {"mappings": []}, {"audience": "required"}),
    ],
)
async def test_bad_input_is_an_envelope_error_and_changes_nothing(
    env: Env, path: str, body: dict[str, Any], fields: dict[str, str] | None
) -> None:
    await env.configure()
    await env.api.put(
        MAPPINGS,
        json={"audience": "newsletter", "mappings": [{"list_key": "vip", "tag": "VIP"}]},
        headers=env.tenant.headers,
    )

    response = await env.api.put(path, json=body, headers=env.tenant.headers)

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    if fields is not None:
        assert error["fields"] == fields
    account = await env.account()
    assert account is not None
    assert (account.api_key, account.list_id, account.enabled) == (KEY, LIST, True)
    async with env.deps.sessionmaker() as session:
        mappings = await mailchimp.list_mappings(
            session, env.tenant.scope.client.id, env.tenant.scope.audience.id
        )
    assert [(m.list_key, m.tag) for m in mappings] == [("vip", "VIP")]


async def test_a_disabled_sync_sends_nothing(env: Env) -> None:
    await env.configure(enabled=False)
    await env.contact(email="ada@example.com", status="subscribed")
    assert await env.syncs() == []

    # Disabled after the change was queued: skipped, still nothing sent.
    await env.configure()
    await env.contact(email="bob@example.com", status="subscribed")
    await env.configure(enabled=False)
    assert await dispatch_mailchimp(env.deps) == 1

    (sync,) = await env.syncs()
    assert sync.status == "skipped"
    assert sync.last_error == "mailchimp_disabled"
    assert env.mailchimp.calls == []


async def test_erasure_deletes_the_member_permanently(env: Env) -> None:
    await env.configure()
    await env.contact(email="ada@example.com", status="subscribed")
    response = await env.api.post(
        "/api/contacts/erase",
        json={"email": "ada@example.com", "audience": "newsletter", "client": "app"},
        headers=env.tenant.headers,
    )
    assert response.status_code == 200, response.text

    await dispatch_mailchimp(env.deps)

    upsert, delete = await env.syncs()
    assert upsert.status == "skipped"
    assert upsert.last_error == "contact_erased"
    assert delete.status == "delivered"
    (call,) = env.mailchimp.calls
    assert (call.method, call.path) == (
        "POST",
        f"/3.0/lists/{LIST}/members/{md5('ada@example.com')}/actions/delete-permanent",
    )


async def test_a_hard_bounce_pushes_the_member_unsubscribed(env: Env) -> None:
    await env.configure()
    await env.contact(email="ada@example.com", status="subscribed")
    await dispatch_mailchimp(env.deps)

    async with env.deps.sessionmaker() as session, session.begin():
        changed = await record_mailbox_fact(session, "ada@example.com", "hard_bounce")
        await mailchimp.record_suppressed(session, changed)
    await dispatch_mailchimp(env.deps)

    _, again = env.mailchimp.calls
    assert again.body == {
        "email_address": "ada@example.com",
        "status_if_new": "unsubscribed",
        "status": "unsubscribed",
    }


def test_the_scheduler_runs_the_mailchimp_dispatcher(worker_env: WorkerEnv) -> None:
    jobs = {job.name: job.run for job in default_jobs(worker_env.settings())}
    assert jobs["mailchimp.dispatch"] is dispatch_mailchimp
