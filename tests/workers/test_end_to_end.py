"""API send → SQS → worker → SES, all real except AWS (moto's server)."""

import httpx
from asgi_lifespan import LifespanManager

from datamailer_api.main import create_app
from datamailer_workers.deps import open_deps
from tests.api.transactional_factories import MESSAGES, put_template, send
from tests.factories import TenantFactory
from tests.workers.conftest import WorkerEnv
from tests.workers.helpers import SENDER, SENDER_ADDRESS, load, run_poller_until, sent_mail


async def test_api_send_arrives_in_ses_once_with_sender_bodies_and_headers(worker_env: WorkerEnv) -> None:
    settings = worker_env.settings()
    app = create_app(settings)
    async with (
        LifespanManager(app),
        open_deps(settings) as deps,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as api,
    ):
        async with deps.sessionmaker() as session:
            tenant = await TenantFactory(session, "test-secret-key").create(senders=[SENDER])
        await deps.sesv2.create_email_identity(EmailIdentity=SENDER_ADDRESS)
        await put_template(api, tenant)

        response = await send(
            api,
            tenant,
            email="ada@example.com",
            context={"first_name": "Ada <script>", "reset_url": "https://example.com/r/1"},
            headers={"X-Entity-Ref-ID": "8f14e45f"},
            cc=["audit@example.com"],
            reply_to="help@app.example.com",
        )
        assert response.status_code == 202, response.text
        message_id = response.json()["message"]["id"]

        async def sent() -> bool:
            return (await load(deps, message_id)).status == "sent"

        await run_poller_until(deps, sent)

        [mail] = sent_mail(worker_env.aws_endpoint)
        assert mail.raw is not None
        assert mail.raw["From"] == "Support Team <support@app.example.com>"
        assert mail.raw["To"] == "ada@example.com"
        assert mail.raw["Cc"] == "audit@example.com"
        assert mail.raw["Reply-To"] == "help@app.example.com"
        assert mail.raw["Subject"] == "Reset your password, Ada <script>"
        assert mail.raw["X-Entity-Ref-ID"] == "8f14e45f"
        text = mail.raw.get_body(("plain",))
        html = mail.raw.get_body(("html",))
        assert text is not None
        assert html is not None
        assert "Reset: https://example.com/r/1" in text.get_content()
        assert "Hi Ada &lt;script&gt;," in html.get_content()
        assert "<script>" not in html.get_content()

        row = await load(deps, message_id)
        assert row.ses_message_id == mail.id
        status = await api.get(f"{MESSAGES}/{message_id}", headers=tenant.headers)
        assert status.status_code == 200, status.text
        body = status.json()
        assert body["message"]["status"] == "sent"
        assert body["message"]["ses_message_id"] == mail.id
        assert [e["event_type"] for e in body["events"]] == ["queued", "sent"]
