"""`POST /webhooks/ses`: SES notifications delivered by SNS over HTTPS (spec/queues.md,
"SES notifications").

Nothing from the body is trusted before its SNS signature is verified: the signing
certificate must come over https from an SNS host (`sns.<region>.amazonaws.com`, or
`.com.cn`) at a `.pem` path, and the signature (SignatureVersion 1: SHA1withRSA, 2:
SHA256withRSA) must match the canonical string AWS documents for the message type. Any
failure is a 403 and nothing is enqueued. Certificates are fetched once per URL and kept
in a small LRU cache, so steady traffic makes no outbound call. Bodies are bounded
(`MAX_BODY_BYTES`, 413); anything but a JSON object of a known SNS type is a 400.

- `Notification`: normalized to `SesWebhookV1` and published to `ses-webhooks` before
  the 200 (a failed publish is a 503, which SNS retries).
- `SubscriptionConfirmation`: confirmed (GET of its SubscribeURL) only when
  `SES_SNS_AUTO_CONFIRM` is on and the URL is https on an SNS host; otherwise logged for
  an operator and acknowledged.
- `UnsubscribeConfirmation`: logged and acknowledged.

`SES_SNS_VERIFY=false` skips the signature (local development only; refused in
production by `check_settings`).
"""

import asyncio
import base64
import binascii
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic_core import from_json

from datamailer_core.errors import DatamailerError, Forbidden, PayloadTooLarge, ValidationFailed
from datamailer_core.queues import QueueNotConfigured, QueuePublisher
from datamailer_core.ses_notifications import SesNotificationError, normalize
from datamailer_core.settings import Environment, Settings
from datamailer_web.app import PublisherDep, SettingsDep

logger = logging.getLogger("datamailer.tracking.ses_webhook")

PATH: Final = "/webhooks/ses"
# SNS caps a message at 256 KiB; its JSON escaping and the envelope's other fields can
# grow that, but not past twice.
MAX_BODY_BYTES: Final = 512 * 1024
CERTIFICATE_CACHE_SIZE: Final = 32
MAX_CERTIFICATE_BYTES: Final = 64 * 1024
FETCH_TIMEOUT_SECONDS: Final = 5.0

# `sns.us-east-1.amazonaws.com`, `sns.us-gov-west-1.amazonaws.com`,
# `sns.cn-north-1.amazonaws.com.cn`; matched against the whole netloc, so a port, user
# info or a longer host (`...amazonaws.com.evil.com`) never passes.
SNS_HOST: Final = re.compile(r"sns\.[a-z]{2}(?:-[a-z]+)+-\d+\.amazonaws\.com(?:\.cn)?")

MESSAGE_TYPES: Final = ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation")
# The string to sign: these keys in this order, each as "key\nvalue\n"; only a
# notification's Subject may be absent.
_SIGNED_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
    "UnsubscribeConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_HASHES: Final[Mapping[str, type[hashes.HashAlgorithm]]] = {"1": hashes.SHA1, "2": hashes.SHA256}


class SignatureRejected(Forbidden):
    code = "invalid_signature"


class Unavailable(DatamailerError):
    """Something this request needs is down; SNS retries a 5xx."""

    status = 503
    code = "unavailable"


def check_settings(settings: Settings) -> None:
    """Refuse to run the ingress unverified in production (raised at startup)."""
    if settings.environment is Environment.production and not settings.ses.sns_verify:
        raise RuntimeError(
            "SES_SNS_VERIFY=false is refused with DATAMAILER_ENV=production: "
            "POST /webhooks/ses would accept unsigned notifications"
        )


def is_sns_url(url: str, *, certificate: bool) -> bool:
    """https on an SNS host; a certificate URL also ends in `.pem`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.scheme != "https" or not SNS_HOST.fullmatch(parts.netloc.lower()):
        return False
    return not certificate or (parts.path.endswith(".pem") and not parts.query and not parts.fragment)


def string_to_sign(message: Mapping[str, Any]) -> bytes:
    kind = message.get("Type")
    if not isinstance(kind, str) or kind not in _SIGNED_KEYS:
        raise SignatureRejected("unknown SNS message type")
    parts = []
    for key in _SIGNED_KEYS[kind]:
        value = message.get(key)
        if value is None and key == "Subject":
            continue
        if not isinstance(value, str):
            raise SignatureRejected(f"signed field {key} is missing or not a string")
        parts.append(f"{key}\n{value}\n")
    return "".join(parts).encode()


class SnsHttp:
    """The ingress's outbound calls to SNS. Signing keys by certificate URL: fetched once
    (one fetch per URL at a time, whatever the concurrency) and kept in a bounded LRU;
    the URL is validated before any fetch. Fetches and confirmations are rare (once per
    certificate, once per subscription), so each opens its own short-lived client.
    `transport` lets tests answer them."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        capacity: int = CERTIFICATE_CACHE_SIZE,
        timeout: float = FETCH_TIMEOUT_SECONDS,
    ) -> None:
        self.transport, self.capacity, self.timeout = transport, capacity, timeout
        self._keys: OrderedDict[str, RSAPublicKey] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self.transport, timeout=self.timeout, follow_redirects=False)

    async def public_key(self, url: str) -> RSAPublicKey:
        if not is_sns_url(url, certificate=True):
            raise SignatureRejected("SigningCertURL is not an https SNS certificate URL")
        if (key := self._cached(url)) is not None:
            return key
        lock = self._locks.setdefault(url, asyncio.Lock())
        try:
            async with lock:
                if (key := self._cached(url)) is not None:
                    return key
                key = _rsa_key(await self._fetch(url))
                self._keys[url] = key
                while len(self._keys) > self.capacity:
                    self._keys.popitem(last=False)
                return key
        finally:
            if self._locks.get(url) is lock and not lock.locked():
                del self._locks[url]

    def _cached(self, url: str) -> RSAPublicKey | None:
        key = self._keys.get(url)
        if key is not None:
            self._keys.move_to_end(url)
        return key

    async def _fetch(self, url: str) -> bytes:
        try:
            async with self._client() as http, http.stream("GET", url) as response:
                if response.status_code != 200:
                    raise SignatureRejected("the signing certificate could not be fetched")
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_CERTIFICATE_BYTES:
                        raise SignatureRejected("the signing certificate is too large")
                return body
        except httpx.HTTPError:
            logger.warning("SNS signing certificate fetch failed", extra={"url": url})
            raise SignatureRejected("the signing certificate could not be fetched") from None

    async def confirm(self, url: str) -> bool:
        """GET a SubscribeURL (already checked to be https on an SNS host)."""
        try:
            async with self._client() as http:
                response = await http.get(url)
        except httpx.HTTPError:
            return False
        return response.status_code == 200


def _rsa_key(pem: bytes) -> RSAPublicKey:
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise SignatureRejected("the signing certificate is not a PEM certificate") from None
    now = datetime.now(UTC)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise SignatureRejected("the signing certificate is not valid now")
    key = certificate.public_key()
    if not isinstance(key, RSAPublicKey):
        raise SignatureRejected("the signing certificate has no RSA key")
    return key


async def verify(message: Mapping[str, Any], sns: SnsHttp) -> None:
    """Raise `SignatureRejected` unless SNS signed `message`."""
    version = message.get("SignatureVersion")
    algorithm = _HASHES.get(version) if isinstance(version, str) else None
    if algorithm is None:
        raise SignatureRejected("unsupported SignatureVersion")
    signed = string_to_sign(message)
    raw_signature, cert_url = message.get("Signature"), message.get("SigningCertURL")
    if not isinstance(raw_signature, str) or not isinstance(cert_url, str):
        raise SignatureRejected("Signature or SigningCertURL is missing")
    try:
        signature = base64.b64decode(raw_signature, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureRejected("Signature is not base64") from None
    key = await sns.public_key(cert_url)
    try:
        key.verify(signature, signed, padding.PKCS1v15(), algorithm())
    except InvalidSignature:
        raise SignatureRejected("the SNS signature does not match") from None


def install(app: FastAPI) -> None:
    """The route on a tracking app built by `build_app` (its settings on app.state)."""
    check_settings(app.state.settings)
    app.state.sns = SnsHttp()
    app.include_router(router)


def get_sns(request: Request) -> SnsHttp:
    sns: SnsHttp = request.app.state.sns
    return sns


SnsDep = Annotated[SnsHttp, Depends(get_sns)]

router = APIRouter(tags=["webhooks"])


@router.post(PATH, responses={200: {"description": "Accepted (and, for a notification, enqueued)."}})
async def ses_webhook(
    request: Request, settings: SettingsDep, publisher: PublisherDep, sns: SnsDep
) -> JSONResponse:
    """An SNS message (the body is JSON, sent as text/plain by SNS)."""
    message = _parse(await _body(request))
    if settings.ses.sns_verify:
        try:
            await verify(message, sns)
        except SignatureRejected as exc:
            logger.warning("SNS message refused", extra={"reason": exc.message, "type": message["Type"]})
            raise
    kind = message["Type"]
    topic = message.get("TopicArn")
    if kind == "Notification":
        await _enqueue(message, publisher)
        return JSONResponse({"status": "enqueued"})
    if kind == "SubscriptionConfirmation":
        return JSONResponse({"status": await _confirm(message, settings, sns)})
    logger.info("SNS unsubscribe confirmation received", extra={"topic_arn": topic})
    return JSONResponse({"status": "acknowledged"})


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"body exceeds {MAX_BODY_BYTES} bytes", fields={"body": "too_large"})
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"body exceeds {MAX_BODY_BYTES} bytes", fields={"body": "too_large"})
    return bytes(body)


def _parse(body: bytes) -> dict[str, Any]:
    try:
        message = from_json(body, allow_inf_nan=False)
    except ValueError:
        raise ValidationFailed("the body is not JSON", fields={"body": "invalid_json"}) from None
    if not isinstance(message, dict):
        raise ValidationFailed("the body is not a JSON object", fields={"body": "must_be_object"})
    if message.get("Type") not in MESSAGE_TYPES:
        raise ValidationFailed("not an SNS message type", fields={"Type": "invalid"})
    return message


async def _enqueue(message: Mapping[str, Any], publisher: QueuePublisher) -> None:
    try:
        contract = normalize(message)
    except SesNotificationError as exc:
        raise ValidationFailed("not an SES notification", fields={"Message": exc.reason}) from None
    try:
        await publisher.publish(contract)
    except QueueNotConfigured:
        raise
    except Exception:  # SQS unreachable or refusing: SNS retries a 5xx
        logger.exception("could not enqueue an SES notification")
        raise Unavailable("the notification could not be enqueued; retry", code="queue_unavailable") from None
    logger.info(
        "SES notification enqueued",
        extra={"provider_event_id": contract.provider_event_id, "type": contract.notification_type},
    )


async def _confirm(message: Mapping[str, Any], settings: Settings, sns: SnsHttp) -> str:
    topic, url = message.get("TopicArn"), message.get("SubscribeURL")
    if not settings.ses.sns_auto_confirm:
        logger.warning(
            "SNS subscription confirmation received; SES_SNS_AUTO_CONFIRM is off, confirm it by hand",
            extra={"topic_arn": topic},
        )
        return "acknowledged"
    if not isinstance(url, str) or not is_sns_url(url, certificate=False):
        logger.warning("SNS SubscribeURL refused: not https on an SNS host", extra={"topic_arn": topic})
        return "refused"
    if not await sns.confirm(url):
        logger.error("SNS subscription confirmation failed", extra={"topic_arn": topic})
        raise Unavailable("the subscription could not be confirmed; retry", code="confirm_failed")
    logger.info("SNS subscription confirmed", extra={"topic_arn": topic})
    return "confirmed"
