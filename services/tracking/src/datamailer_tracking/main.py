"""Public routes (port 8001): open pixel, click redirect, unsubscribe and preference pages,
SES webhook ingress."""

from fastapi import FastAPI

from datamailer_core.settings import Settings
from datamailer_web.app import build_app


def create_app(settings: Settings | None = None) -> FastAPI:
    return build_app(settings or Settings(), service="tracking", title="Datamailer tracking")
