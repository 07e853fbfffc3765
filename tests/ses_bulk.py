"""A small SES v2-compatible endpoint for `SendBulkEmail`, which moto does not implement,
in front of moto's server for everything else.

`POST /v2/email/outbound-bulk-emails` follows AWS's documented request and response
(API reference, SendBulkEmail / BulkEmailEntry / BulkEmailEntryResult):

- `DefaultContent.Template.TemplateContent` (an inline template: `Subject`, `Html`,
  `Text`) is rendered per entry with `{{name}}` substitution (dotted names look into
  objects) from `DefaultContent.Template.TemplateData` merged with the entry's
  `ReplacementEmailContent.ReplacementTemplate.ReplacementTemplateData` (the entry's
  values win). No HTML escaping, as AWS documents. A variable missing from the data
  (or any other `{{` construct) is a rendering failure: SES still answers `SUCCESS`
  for the entry and reports the failure later (a Rendering Failure event), so it is
  recorded in `rendering_failures`, not as a message;
- headers: `DefaultContent.Template.Headers`, each replaced or extended by the entry's
  `ReplacementHeaders` (same name, case-insensitive);
- tags: `DefaultEmailTags`, replaced by name by the entry's `ReplacementTags`;
- the response is `{"BulkEmailEntryResults": [...]}`, one result per entry in order:
  `{"Status": "SUCCESS", "MessageId": ...}` or `{"Status": <status>, "Error": ...}`;
- a sender that is not verified in moto's SES fails the whole call with
  `400 MessageRejected` (as SES and moto's SendEmail do); no entries, more than 50, a
  stored template (`TemplateName`, which moto cannot hold) or unparsable template data
  fail it with `400 BadRequestException`.

Statuses can be injected per destination address (`answer`, or `POST /_bulk/statuses`
with `{"address": ["ACCOUNT_THROTTLED", ...]}`): each injected status answers one
entry for that address, in order, and nothing is recorded for it; then `SUCCESS`.
`GET /_bulk/messages` lists the rendered messages, `GET /_bulk/failures` the rendering
failures and `POST /_bulk/reset` clears them. Every other request is forwarded to moto.
"""

import email.policy
import http.client
import itertools
import json
import re
import sys
import threading
from collections import defaultdict, deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from email.utils import parseaddr
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

BULK_PATH: Final = "/v2/email/outbound-bulk-emails"
MAX_ENTRIES: Final = 50
# Documented per-entry statuses (BulkEmailStatus), with the spellings the SDK model uses.
STATUSES: Final = frozenset(
    {
        "SUCCESS",
        "MESSAGE_REJECTED",
        "MAIL_FROM_DOMAIN_NOT_VERIFIED",
        "CONFIGURATION_SET_DOES_NOT_EXIST",
        "CONFIGURATION_SET_NOT_FOUND",
        "TEMPLATE_DOES_NOT_EXIST",
        "TEMPLATE_NOT_FOUND",
        "ACCOUNT_SUSPENDED",
        "ACCOUNT_THROTTLED",
        "ACCOUNT_DAILY_QUOTA_EXCEEDED",
        "INVALID_SENDING_POOL_NAME",
        "ACCOUNT_SENDING_PAUSED",
        "CONFIGURATION_SET_SENDING_PAUSED",
        "INVALID_PARAMETER",
        "INVALID_PARAMETER_VALUE",
        "TRANSIENT_FAILURE",
        "FAILED",
    }
)
_VARIABLE = re.compile(r"\{\{\s*([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)\s*\}\}")
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})
MOTO_ACCOUNT: Final = "123456789012"


class RenderingFailure(Exception):
    pass


def substitute(template: str, data: Mapping[str, Any]) -> str:
    """SES's inline-template substitution: `{{name}}` → the value, unescaped."""

    def value(match: re.Match[str]) -> str:
        found: Any = data
        for part in match.group(1).split("."):
            if not isinstance(found, Mapping) or part not in found:
                raise RenderingFailure(f"Attribute '{match.group(1)}' is not present in the rendering data.")
            found = found[part]
        return found if isinstance(found, str) else json.dumps(found)

    out = _VARIABLE.sub(value, template)
    if "{{" in out:
        raise RenderingFailure("unsupported template construct")
    return out


@dataclass
class BulkMessage:
    """One rendered message as SES would send it."""

    message_id: str
    source: str
    destinations: list[str]
    subject: str
    html: str | None
    text: str | None
    headers: dict[str, str]
    tags: dict[str, str]
    configuration_set: str | None
    reply_to: list[str] = field(default_factory=list)

    def as_email(self) -> EmailMessage:
        return as_email(asdict(self))


def as_email(record: Mapping[str, Any]) -> EmailMessage:
    """A recorded message (a `BulkMessage` as a dict) as the MIME message it stands for."""
    message = EmailMessage(policy=email.policy.default)
    message["From"] = record["source"]
    message["To"] = ", ".join(record["destinations"])
    if record["reply_to"]:
        message["Reply-To"] = ", ".join(record["reply_to"])
    message["Subject"] = record["subject"]
    for name, value in record["headers"].items():
        message[name] = value
    if record["text"] is not None:
        message.set_content(record["text"])
    if record["html"] is not None:
        if record["text"] is None:
            message.set_content(record["html"], subtype="html")
        else:
            message.add_alternative(record["html"], subtype="html")
    return message


class BadRequest(Exception):
    def __init__(self, code: str, message: str) -> None:
        self.code, self.message = code, message


class BulkEndpoint:
    """The state behind `SendBulkEmail`: recorded messages, failures, injected statuses."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[BulkMessage] = []
        self.rendering_failures: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.injected: defaultdict[str, deque[str]] = defaultdict(deque)
        self.ids = itertools.count(1)

    def reset(self) -> None:
        with self.lock:
            self.messages.clear()
            self.rendering_failures.clear()
            self.requests.clear()
            self.injected.clear()

    def answer(self, address: str, *statuses: str) -> None:
        """The next entries for `address` get these statuses, in order."""
        unknown = set(statuses) - STATUSES
        assert not unknown, f"not a documented status: {unknown}"
        with self.lock:
            self.injected[address.lower()].extend(statuses)

    def send_bulk_email(self, request: dict[str, Any], verified: bool) -> dict[str, Any]:
        template = (request.get("DefaultContent") or {}).get("Template")
        entries = request.get("BulkEmailEntries") or []
        if not isinstance(template, dict) or not entries:
            raise BadRequest(
                "BadRequestException", "DefaultContent.Template and BulkEmailEntries are required"
            )
        if len(entries) > MAX_ENTRIES:
            raise BadRequest("BadRequestException", f"at most {MAX_ENTRIES} BulkEmailEntries")
        if "TemplateContent" not in template:
            raise BadRequest("BadRequestException", "only inline templates (TemplateContent) are supported")
        source = str(request.get("FromEmailAddress") or "")
        if not verified:
            raise BadRequest("MessageRejected", f"Email address is not verified. {source}")
        content = template["TemplateContent"]
        try:
            defaults = json.loads(template.get("TemplateData") or "{}")
            data = [
                {**defaults, **json.loads(
                    ((e.get("ReplacementEmailContent") or {}).get("ReplacementTemplate") or {}).get(
                        "ReplacementTemplateData") or "{}"
                )}
                for e in entries
            ]  # fmt: skip
        except (json.JSONDecodeError, AttributeError, TypeError) as exc:
            raise BadRequest("BadRequestException", f"invalid template data: {exc}") from None
        with self.lock:
            self.requests.append(request)
            return {
                "BulkEmailEntryResults": [
                    self._entry(request, content, template, entry, values)
                    for entry, values in zip(entries, data, strict=True)
                ]
            }

    def _entry(
        self,
        request: dict[str, Any],
        content: dict[str, str],
        template: dict[str, Any],
        entry: dict[str, Any],
        values: dict[str, Any],
    ) -> dict[str, str]:
        destination = entry.get("Destination") or {}
        to = list(destination.get("ToAddresses") or [])
        everyone = (
            to + list(destination.get("CcAddresses") or []) + list(destination.get("BccAddresses") or [])
        )
        if not everyone or len(everyone) > MAX_ENTRIES:
            return {"Status": "INVALID_PARAMETER", "Error": "1 to 50 destinations per entry"}
        address = parseaddr(everyone[0])[1].lower()
        injected = self.injected.get(address)
        if injected:
            status = injected.popleft()
            if status != "SUCCESS":
                return {"Status": status, "Error": f"injected {status}"}
        message_id = f"bulk-{next(self.ids):08d}"
        headers = {h["Name"]: h["Value"] for h in template.get("Headers") or []}
        for replacement in entry.get("ReplacementHeaders") or []:
            for name in [n for n in headers if n.lower() == replacement["Name"].lower()]:
                del headers[name]
            headers[replacement["Name"]] = replacement["Value"]
        tags = {t["Name"]: t["Value"] for t in request.get("DefaultEmailTags") or []}
        tags.update({t["Name"]: t["Value"] for t in entry.get("ReplacementTags") or []})
        try:
            html = None if content.get("Html") is None else substitute(content["Html"], values)
            text = None if content.get("Text") is None else substitute(content["Text"], values)
            subject = substitute(content.get("Subject") or "", values)
        except RenderingFailure as exc:
            self.rendering_failures.append(
                {"message_id": message_id, "destinations": everyone, "error": str(exc)}
            )
        else:
            self.messages.append(
                BulkMessage(
                    message_id=message_id,
                    source=str(request.get("FromEmailAddress")),
                    destinations=everyone,
                    subject=subject,
                    html=html,
                    text=text,
                    headers=headers,
                    tags=tags,
                    configuration_set=request.get("ConfigurationSetName"),
                    reply_to=list(request.get("ReplyToAddresses") or []),
                )
            )
        return {"Status": "SUCCESS", "MessageId": message_id}


def sender_is_verified(source: str) -> bool:
    """Whether moto's SES (in this process) has the sender's address or domain."""
    from moto.ses.models import ses_backends

    return bool(ses_backends[MOTO_ACCOUNT]["us-east-1"]._is_verified_address(source))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle on, each answer waits for the
    # client's delayed ACK (40 ms), which made every AWS call of the tests 40 ms slower.
    disable_nagle_algorithm = True
    server: "BulkProxy"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._reply(status, json.dumps(value).encode())

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def _route(self, method: str) -> None:
        endpoint = self.server.endpoint
        path = urlsplit(self.path).path
        if method == "POST" and path == BULK_PATH:
            try:
                request = json.loads(self._body() or b"{}")
                source = str(request.get("FromEmailAddress") or "")
                self._json(200, endpoint.send_bulk_email(request, sender_is_verified(source)))
            except BadRequest as exc:
                self._json(400, {"__type": exc.code, "message": exc.message})
            except json.JSONDecodeError:
                self._json(400, {"__type": "BadRequestException", "message": "not JSON"})
        elif method == "GET" and path == "/_bulk/messages":
            self._json(200, [asdict(m) for m in endpoint.messages])
        elif method == "GET" and path == "/_bulk/failures":
            self._json(200, endpoint.rendering_failures)
        elif method == "POST" and path == "/_bulk/statuses":
            for address, statuses in json.loads(self._body()).items():
                endpoint.answer(address, *statuses)
            self._json(200, {})
        elif method == "POST" and path == "/_bulk/reset":
            endpoint.reset()
            self._json(200, {})
        else:
            self._forward(method)

    def _forward(self, method: str) -> None:
        body = self._body()
        connection = http.client.HTTPConnection(
            self.server.upstream_host, self.server.upstream_port, timeout=60
        )
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            connection.request(method, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            kept = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}
            self._reply(response.status, data, kept)
        finally:
            connection.close()


class BulkProxy(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a stopped poller's cancelled long poll) is no error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def __init__(self, upstream: str, endpoint: BulkEndpoint) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.endpoint = endpoint

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def bulk_proxy(upstream: str) -> Iterator[tuple[str, BulkEndpoint]]:
    """Serve the endpoint in front of `upstream` (moto) in a thread; yields its URL."""
    endpoint = BulkEndpoint()
    server = BulkProxy(upstream, endpoint)
    thread = threading.Thread(target=server.serve_forever, name="ses-bulk", daemon=True)
    thread.start()
    try:
        yield server.url, endpoint
    finally:
        server.shutdown()
        server.server_close()


def bulk_messages(aws_endpoint: str) -> list[dict[str, Any]]:
    """What the endpoint rendered (as `BulkMessage` dicts), in order."""
    return list(httpx.get(f"{aws_endpoint}/_bulk/messages", timeout=30).json())
