"""The recipient pages in a real headless browser (Debian's /usr/bin/chromium, driven by
Playwright): a campaign sent through the worker path to moto's SES, its unsubscribe link
taken from the raw message and opened against the tracking service under uvicorn; and a
double opt-in link from the API. Labels, confirmations, the database afterwards, no
sideways scrolling on a phone, and a screenshot of each page in tests/artifacts/."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import httpx
import pytest
from asgi_lifespan import LifespanManager
from playwright.async_api import Browser, BrowserContext, Page, ViewportSize, async_playwright, expect
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from datamailer_api.main import create_app as create_api
from datamailer_server import ops
from datamailer_server.localpg import free_port
from datamailer_workers.deps import open_deps
from tests.api.campaign_factories import Group, builder, create_campaign
from tests.conftest import run_sync, settings_for
from tests.factories import Tenant, TenantFactory
from tests.tracking.test_verify import request_link, subscription
from tests.workers.campaign_helpers import queue, raw_messages, running, sending_tenant, wait_for_status
from tests.workers.conftest import WorkerEnv

pytestmark = pytest.mark.browser

CHROMIUM: Final = Path("/usr/bin/chromium")
CHROMIUM_ARGS: Final = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS: Final = Path(__file__).resolve().parents[1] / "artifacts"
PHONE: Final = ViewportSize(width=390, height=844)
SECRET: Final = "test-secret-key"
CLIENT_NAME: Final = "Acme Weekly"
AUDIENCE_NAME: Final = "Readers"


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"no browser: {CHROMIUM} is missing (`apt-get install chromium`; .ci/run installs it as root)"
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture
async def phone(browser: Browser) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    yield context
    await context.close()


@pytest.fixture
def env(make_database: Callable[[], str], aws_endpoint: str) -> WorkerEnv:
    """A committed database (the server is another process) and moto's queues."""
    database_url = make_database()
    urls = run_sync(ops.create_queues(settings_for(database_url, aws_endpoint)))
    return WorkerEnv(database_url, aws_endpoint, {ops.QUEUE_ENV[q]: u for q, u in urls.items()})


@pytest.fixture
async def site(env: WorkerEnv, tmp_path: Path) -> AsyncIterator[str]:
    """The tracking service under uvicorn on a free port; PUBLIC_BASE_URL is its address."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "AWS_", "DATAMAILER_"))
    }
    argv = [sys.executable, "-m", "uvicorn", "--factory", "datamailer_tracking.main:create_app"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(argv, env={**inherited, **env.environ(PUBLIC_BASE_URL=base)}, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(base_url=base) as client:
            while True:
                assert proc.poll() is None, "the tracking service exited"
                assert time.monotonic() < deadline, "the tracking service did not start"
                try:
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@asynccontextmanager
async def database(env: WorkerEnv) -> AsyncIterator[AsyncSession]:
    engine = create_async_engine(env.database_url)
    try:
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            yield session
    finally:
        await engine.dispose()


async def name_scope(session: AsyncSession, tenant: Tenant) -> None:
    await session.execute(
        text("UPDATE clients SET name = :n WHERE id = :id"), {"n": CLIENT_NAME, "id": tenant.scope.client.id}
    )
    await session.execute(
        text("UPDATE audiences SET name = :n WHERE id = :id"),
        {"n": AUDIENCE_NAME, "id": tenant.scope.audience.id},
    )
    await session.commit()


async def fits_the_phone(page: Page) -> bool:
    """No sideways scrolling. Against the phone's width, not `innerWidth`: a mobile browser
    zooms out to show a page wider than the screen, and `innerWidth` grows with it."""
    width = int(await page.evaluate("document.documentElement.scrollWidth"))
    return width <= PHONE["width"]


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=path, full_page=True)
    print(f"screenshot: {path}")  # noqa: T201


async def test_a_sent_campaigns_unsubscribe_link_leaves_the_audience_in_the_browser(
    env: WorkerEnv, site: str, phone: BrowserContext, aws_endpoint: str
) -> None:
    settings = env.settings(SES_MAX_SEND_RATE="2000", PUBLIC_BASE_URL=site)
    async with open_deps(settings) as deps:
        tenant = await sending_tenant(deps)
        async with deps.sessionmaker() as session:
            await name_scope(session, tenant)
            [contact_id] = await builder(session, tenant).add(Group(1))
            await session.commit()
            campaign = await create_campaign(
                session, tenant, "nov", sender_id="news", text_body="Hi {{ email }}", category_tag="news"
            )
        await queue(deps, campaign.id)
        async with running(deps):
            await wait_for_status(deps, campaign.id, "sent")
    [message] = raw_messages(aws_endpoint)
    link = message["List-Unsubscribe"].split(",")[0].strip().strip("<>")
    assert link.startswith(f"{site}/unsubscribe/")

    page = await phone.new_page()
    opened = await page.goto(link)
    assert opened is not None
    assert opened.status == 200
    await expect(page.get_by_role("heading", name=f"Email from {CLIENT_NAME}")).to_be_visible()
    await expect(page.get_by_label(f"Stop emails from {CLIENT_NAME}")).to_be_checked()  # a campaign's default
    audience = page.get_by_label(f"Stop everything sent to the {AUDIENCE_NAME} list")
    everything = page.get_by_label("Stop all marketing email to this address")
    await expect(audience).not_to_be_checked()
    await expect(everything).not_to_be_checked()
    await expect(page.get_by_label("news", exact=True)).to_be_checked()
    assert await fits_the_phone(page)
    await screenshot(page, "unsubscribe-form")

    await audience.check()
    await page.get_by_role("button", name="Save my choice").click()
    await expect(page.get_by_role("heading", name="Your choice is saved")).to_be_visible()
    await expect(page.get_by_role("status")).to_contain_text(
        f"will no longer receive email sent to the {AUDIENCE_NAME} list"
    )
    assert await fits_the_phone(page)
    await screenshot(page, "unsubscribe-confirmation")

    async with database(env) as session:
        levels = await session.execute(
            text(
                "SELECT client_id IS NULL AS audience_level, status FROM subscriptions WHERE contact_id = :id"
            ),
            {"id": contact_id},
        )
        assert {row.audience_level: row.status for row in levels} == {
            True: "unsubscribed",
            False: "subscribed",
        }
        assert (
            await session.scalar(
                text("SELECT global_unsubscribed_at FROM contacts WHERE id = :id"), {"id": contact_id}
            )
            is None
        )
        recipient = (
            await session.execute(
                text(
                    "SELECT r.status, c.unsubscribe_count FROM campaign_recipients r"
                    " JOIN campaigns c ON c.id = r.campaign_id WHERE r.contact_id = :id"
                ),
                {"id": contact_id},
            )
        ).one()
        assert (recipient.status, recipient.unsubscribe_count) == ("unsubscribed", 1)


async def test_a_verification_link_confirms_the_subscription_in_the_browser(
    env: WorkerEnv, site: str, phone: BrowserContext
) -> None:
    api_app = create_api(env.settings(PUBLIC_BASE_URL=site))
    async with (
        LifespanManager(api_app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=api_app), base_url="http://api.test") as api,
        database(env) as session,
    ):
        tenant = await TenantFactory(session, SECRET).create()
        await name_scope(session, tenant)
        token = await request_link(api, tenant, session)
        stored = await session.scalar(text("SELECT text_body FROM transactional_messages"))
        link = f"{site}/verify/{token}"
        assert link in (stored or "")
        assert await subscription(session, tenant, "ada@example.com") == ("pending", None)

        page = await phone.new_page()
        opened = await page.goto(link)
        assert opened is not None
        assert opened.status == 200
        await expect(page.get_by_role("heading", name="Subscription confirmed")).to_be_visible()
        await expect(page.get_by_role("status")).to_contain_text(
            f"is subscribed to {CLIENT_NAME} ({AUDIENCE_NAME}). Thank you!"
        )
        assert await fits_the_phone(page)
        await screenshot(page, "verify-confirmation")

        await session.commit()  # ends the read transaction: the server committed in its own connection
        status, verified_at = await subscription(session, tenant, "ada@example.com")
        assert status == "subscribed"
        assert verified_at is not None
