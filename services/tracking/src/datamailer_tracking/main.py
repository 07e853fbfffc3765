"""Public routes (port 8001): open pixel, click redirect, unsubscribe and preference pages,
SES webhook ingress."""

from fastapi import FastAPI
from starlette.types import ASGIApp

from datamailer_core.settings import Settings
from datamailer_tracking import ses_webhook
from datamailer_tracking.events import EventPublisher
from datamailer_tracking.publisher import EventProcess
from datamailer_tracking.routes import TrackingRoutes
from datamailer_tracking.unsubscribe import router as unsubscribe_router
from datamailer_tracking.verify import router as verify_router
from datamailer_web.app import build_app


async def _start_events(app: FastAPI) -> None:
    settings: Settings = app.state.settings
    if settings.tracking.event_publisher == "process":
        app.state.events = EventProcess(settings)
        await app.state.events.start()
    else:
        app.state.events = EventPublisher(app.state.publisher)
        app.state.events.start()


async def _flush_events(app: FastAPI) -> None:
    await app.state.events.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = build_app(
        settings,
        service="tracking",
        title="Datamailer tracking",
        on_startup=_start_events,
        on_shutdown=_flush_events,
    )
    # Outermost, ahead of even Starlette's error and FastAPI's telemetry and body-limit
    # middleware (a few percent of a pixel each): `GET /t/o/{token}.gif` and
    # `GET /t/c/{token}` answer here and never reach them; everything else goes through.
    build_stack = app.build_middleware_stack
    secret_key = settings.security.secret_key.get_secret_value()

    def build_tracking_stack() -> ASGIApp:
        return TrackingRoutes(
            build_stack(), state=app.state, secret_key=secret_key, metrics=app.state.metrics
        )

    app.build_middleware_stack = build_tracking_stack  # type: ignore[method-assign]
    app.include_router(unsubscribe_router)
    app.include_router(verify_router)
    ses_webhook.install(app)
    return app
