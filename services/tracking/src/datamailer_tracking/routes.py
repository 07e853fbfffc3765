"""The open pixel and the click redirect as plain ASGI, ahead of the framework.

They are the hottest routes there are (every open and every click of every campaign)
and need nothing FastAPI adds: no body, no validation beyond the token's shape and the
link's signature, no database. Answered here, before routing, dependency resolution
and the request-id middleware, the service keeps a large share of a bare
uvicorn endpoint's rate (bench/tracking.py); behind FastAPI's routing it managed about
a quarter. What remains per event is building its JSON body and writing it down a pipe
(`publisher.EventProcess`). Any other request goes on to the app.

Both answer GET and HEAD; only a GET is an open or a click (link checkers and Apple
Mail's URL previews send HEAD). Their latency is recorded like any route's, under the
route's template (a token is never a label), at the cost of one histogram observation.
"""

import time
from typing import Final
from urllib.parse import parse_qs, quote

from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from datamailer_core.metrics import Metrics
from datamailer_tracking.click import INVALID_PAGE, click_target, record_click
from datamailer_tracking.events import EventSink
from datamailer_tracking.pixel import NO_STORE, PIXEL, record_open

PIXEL_PREFIX: Final = "/t/o/"
CLICK_PREFIX: Final = "/t/c/"
PIXEL_ROUTE: Final = "/t/o/{token}.gif"
CLICK_ROUTE: Final = "/t/c/{token}"
SERVICE: Final = "tracking"
_NO_STORE: Final = [(k.lower().encode(), v.encode()) for k, v in NO_STORE.items()]
_PIXEL_HEADERS: Final = [
    (b"content-type", b"image/gif"),
    (b"content-length", str(len(PIXEL)).encode()),
    *_NO_STORE,
]
_INVALID_HEADERS: Final = [
    (b"content-type", b"text/html; charset=utf-8"),
    (b"content-length", str(len(INVALID_PAGE)).encode()),
    *_NO_STORE,
]
# What Starlette's RedirectResponse leaves unquoted in a Location header.
_LOCATION_SAFE: Final = ":/%#?=@[]!$&'()*+,;"


def _request_meta(scope: Scope) -> tuple[str | None, str | None]:
    user_agent = None
    for name, value in scope["headers"]:
        if name == b"user-agent":
            user_agent = value.decode("latin-1")
            break
    client = scope.get("client")
    return user_agent, client[0] if client else None


def _last(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


class TrackingRoutes:
    def __init__(self, app: ASGIApp, state: State, secret_key: str, metrics: Metrics) -> None:
        self.app, self.state, self.secret_key, self.metrics = app, state, secret_key, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            path: str = scope["path"]
            if path.startswith(PIXEL_PREFIX) and path.endswith(".gif"):
                token = path[len(PIXEL_PREFIX) : -len(".gif")]
                if token and "/" not in token:
                    start = time.perf_counter()
                    await self._pixel(scope, send, token)
                    self.metrics.observe_request(
                        SERVICE, scope["method"], PIXEL_ROUTE, 200, time.perf_counter() - start
                    )
                    return
            elif path.startswith(CLICK_PREFIX):
                token = path[len(CLICK_PREFIX) :]
                if token and "/" not in token:
                    start = time.perf_counter()
                    status = await self._click(scope, send, token)
                    self.metrics.observe_request(
                        SERVICE, scope["method"], CLICK_ROUTE, status, time.perf_counter() - start
                    )
                    return
        await self.app(scope, receive, send)

    @property
    def events(self) -> EventSink:
        events: EventSink = self.state.events
        return events

    async def _pixel(self, scope: Scope, send: Send, token: str) -> None:
        """The same GIF for every token, known or not."""
        if scope["method"] == "GET":
            await record_open(self.events, token, *_request_meta(scope))
        await _respond(send, scope, 200, _PIXEL_HEADERS, PIXEL)

    async def _click(self, scope: Scope, send: Send, token: str) -> int:
        """The status answered: 302 to the signed target, 400 for a bad link."""
        query = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        url = click_target(self.secret_key, token, _last(query, "u"), _last(query, "s"))
        if url is None:
            await _respond(send, scope, 400, _INVALID_HEADERS, INVALID_PAGE)
            return 400
        if scope["method"] == "GET":
            await record_click(self.events, token, url, *_request_meta(scope))
        location = quote(url, safe=_LOCATION_SAFE).encode("latin-1")
        headers = [(b"location", location), (b"content-length", b"0"), *_NO_STORE]
        await _respond(send, scope, 302, headers, b"")
        return 302


async def _respond(
    send: Send, scope: Scope, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})
