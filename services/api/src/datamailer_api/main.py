"""The client REST API (port 8000)."""

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from datamailer_api.audience.router import router as contacts_router
from datamailer_api.audience.transfer import CSV_IMPORT_LIMIT, CSV_IMPORT_PATH
from datamailer_api.audience.transfer import router as transfer_router
from datamailer_api.campaigns.router import router as campaigns_router
from datamailer_api.lists.router import BODY_LIMIT_SUFFIXES
from datamailer_api.lists.router import router as lists_router
from datamailer_api.mailchimp.router import router as mailchimp_router
from datamailer_api.rendering import with_render_pool
from datamailer_api.senders.router import router as senders_router
from datamailer_api.transactional.router import router as transactional_router
from datamailer_api.verification.router import router as verification_router
from datamailer_api.webhooks.router import router as webhooks_router
from datamailer_core.settings import Settings
from datamailer_web.app import build_app


def create_app(settings: Settings | None = None) -> FastAPI:
    app = build_app(
        settings or Settings(),
        service="api",
        title="Datamailer client API",
        body_limits={CSV_IMPORT_PATH: CSV_IMPORT_LIMIT},
        body_limit_suffixes=BODY_LIMIT_SUFFIXES,
    )
    with_render_pool(app)
    app.include_router(senders_router)
    app.include_router(transfer_router)
    app.include_router(contacts_router)
    app.include_router(transactional_router)
    app.include_router(verification_router)
    app.include_router(campaigns_router)
    app.include_router(lists_router)
    app.include_router(webhooks_router)
    app.include_router(mailchimp_router)

    async def api_docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    # Datamailer serves its interactive docs at /api-docs/; both paths answer here.
    app.add_api_route("/api-docs/", api_docs, methods=["GET"], include_in_schema=False)
    return app
