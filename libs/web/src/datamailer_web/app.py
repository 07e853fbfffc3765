"""What every Datamailer web service shares: the database on app.state, the error
envelope, request ids and latency metrics, body limits, `/health` and `/metrics`."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from datamailer_core.aws import aws_client, aws_session
from datamailer_core.db.engine import create_engine, create_sessionmaker
from datamailer_core.logging import configure_logging, correlation_id, usable_correlation_id
from datamailer_core.metrics import CONTENT_TYPE, Metrics
from datamailer_core.queues import QueuePublisher
from datamailer_core.settings import Settings
from datamailer_web.errors import error_body, error_responses, install_error_handlers

HEALTH_TIMEOUT_SECONDS = 2.0


def build_app(
    settings: Settings,
    *,
    service: str,
    title: str,
    body_limits: Mapping[str, int] | None = None,
    body_limit_suffixes: Mapping[str, int] | None = None,
    default_body_limit: int = 1024 * 1024,
    on_startup: Callable[[FastAPI], Any] | None = None,
    on_shutdown: Callable[[FastAPI], Any] | None = None,
) -> FastAPI:
    """`on_startup(app)` runs once the clients are open; `on_shutdown(app)` before any
    closes (e.g. to flush what is still to be published). `body_limits` are by exact
    path, `body_limit_suffixes` by how a path ends (routes with a key in the path)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log)
        engine = create_engine(settings.database)
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        async with AsyncExitStack() as stack:
            session = aws_session(settings.aws)
            app.state.sqs = await stack.enter_async_context(aws_client(session, settings.aws, "sqs"))
            app.state.sesv2 = await stack.enter_async_context(aws_client(session, settings.aws, "sesv2"))
            app.state.publisher = QueuePublisher(app.state.sqs, settings.queues)
            if on_startup is not None:
                await on_startup(app)
            try:
                yield
            finally:
                try:
                    if on_shutdown is not None:
                        await on_shutdown(app)
                finally:
                    await engine.dispose()

    app = FastAPI(title=title, lifespan=lifespan, version="1.0.0")
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.service = service
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(
        BodyLimit,
        limits=dict(body_limits or {}),
        suffixes=dict(body_limit_suffixes or {}),
        default=default_body_limit,
    )
    app.add_middleware(RequestContext, service=service, metrics=app.state.metrics)
    app.add_api_route("/health", health, methods=["GET"], tags=["ops"], include_in_schema=True)
    app.add_api_route("/metrics", metrics, methods=["GET"], tags=["ops"], include_in_schema=False)
    return app


def install_openapi(app: FastAPI) -> None:
    """FastAPI documents request validation as 422; this API answers 400 in the error
    envelope, so the schema says so (a client generator then knows the real shape)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    responses = operation.get("responses", {})
                    if (
                        responses.pop("422", None) is not None
                        or operation.get("parameters")
                        or "requestBody" in operation
                    ):
                        responses.setdefault("400", error_responses(400)[400])
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


async def health(request: Request) -> JSONResponse:
    try:
        async with request.app.state.engine.connect() as conn:
            await asyncio.wait_for(conn.execute(text("select 1")), HEALTH_TIMEOUT_SECONDS)
    except Exception:  # any failure to reach the database is the answer, not an error
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})


async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    maker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with maker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_publisher(request: Request) -> QueuePublisher:
    publisher: QueuePublisher = request.app.state.publisher
    return publisher


PublisherDep = Annotated[QueuePublisher, Depends(get_publisher)]


def get_sesv2(request: Request) -> Any:
    return request.app.state.sesv2


# The process's SES v2 client (aioboto3), for the few routes that send at once.
SesDep = Annotated[Any, Depends(get_sesv2)]


class RequestContext:
    """Sets the correlation id (from `X-Request-ID` or new) and records request latency."""

    def __init__(self, app: ASGIApp, service: str, metrics: Metrics) -> None:
        self.app, self.service, self.metrics = app, service, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = usable_correlation_id(incoming) or uuid.uuid4().hex
        token = correlation_id.set(rid)
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # The route's template, never the raw path: ids and tokens are not labels.
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(
                self.service, scope["method"], route, status, time.perf_counter() - start
            )
            correlation_id.reset(token)


class BodyLimit:
    """Answers 413 in the envelope before a handler reads a body over the route's limit,
    whether the size is declared in Content-Length or only discovered while streaming."""

    def __init__(
        self, app: ASGIApp, limits: dict[str, int], default: int, suffixes: dict[str, int] | None = None
    ) -> None:
        self.app, self.limits, self.default = app, limits, default
        self.suffixes = dict(suffixes or {})

    def limit_for(self, path: str) -> int:
        if path in self.limits:
            return self.limits[path]
        for suffix, limit in self.suffixes.items():
            if path.endswith(suffix):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _too_large(send, limit)


class _BodyTooLarge(StarletteHTTPException):
    # An HTTPException, because FastAPI turns any other error raised while it reads a
    # body into a 400; this one reaches the envelope renderer as a 413.
    def __init__(self) -> None:
        super().__init__(413, "body too large")


async def _too_large(send: Send, limit: int) -> None:
    response = JSONResponse(
        error_body("payload_too_large", f"body exceeds {limit} bytes", {"body": "too_large"}), 413
    )
    await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})
