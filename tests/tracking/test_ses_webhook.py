"""`POST /webhooks/ses` through the tracking app: SNS messages signed with a test key
whose self-signed certificate the app fetches over a mock transport (the URL checks are
the app's own), and what reaches the `ses-webhooks` queue in moto's SQS."""

import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from datamailer_core.aws import aws_client, aws_session
from datamailer_core.contracts import SesWebhookV1, parse_message
from datamailer_core.settings import Settings
from datamailer_tracking.main import create_app
from datamailer_tracking.ses_webhook import SnsHttp, is_sns_url
from tests.conftest import settings_for

CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem"
TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-events"
SUBSCRIBE_URL = (
    "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=" + TOPIC + "&Token=2336412f37"
)
TEXT = {"Content-Type": "text/plain; charset=UTF-8"}

# The string to sign, as AWS documents it ("Verifying the signatures of Amazon SNS
# messages"), written out here rather than taken from the code under test.
NOTIFICATION_KEYS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
CONFIRMATION_KEYS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")


@dataclass
class Signer:
    key: rsa.RSAPrivateKey
    pem: bytes

    def sign(self, message: dict[str, Any], version: str = "2", cert_url: str = CERT_URL) -> dict[str, Any]:
        keys = NOTIFICATION_KEYS if message["Type"] == "Notification" else CONFIRMATION_KEYS
        text = "".join(f"{k}\n{message[k]}\n" for k in keys if k in message)
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(text.encode(), padding.PKCS1v15(), algorithm)
        return {
            **message,
            "SignatureVersion": version,
            "Signature": base64.b64encode(signature).decode(),
            "SigningCertURL": cert_url,
        }


def make_signer(not_after: timedelta = timedelta(days=1)) -> Signer:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=2))
        .not_valid_after(now + not_after)
        .sign(key, hashes.SHA256())
    )
    return Signer(key, cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def signer() -> Signer:
    return make_signer()


@dataclass
class Sns:
    """Answers every GET with the signing certificate (so only the app's URL checks stand
    between a message and a fetch) and a SubscribeURL with SNS's confirmation."""

    pem: bytes
    requests: list[str] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(str(request.url))
        if request.url.params.get("Action") == "ConfirmSubscription":
            return httpx.Response(200, text="<ConfirmSubscriptionResponse/>")
        return httpx.Response(200, content=self.pem)


def ses_bounce(ses_id: str = "0100018c-ses-id") -> str:
    return json.dumps(
        {
            "notificationType": "Bounce",
            "bounce": {
                "bounceType": "Permanent",
                "bounceSubType": "General",
                "bouncedRecipients": [{"emailAddress": "ada@example.com"}],
                "timestamp": "2026-12-03T10:00:00.000Z",
            },
            "mail": {"messageId": ses_id, "timestamp": "2026-12-03T09:59:58.000Z"},
        }
    )


def notification(message_id: str = "a1b2c3d4-0001", **extra: str) -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": TOPIC,
        "Message": ses_bounce(),
        "Timestamp": "2026-12-03T10:00:01.000Z",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
        **extra,
    }


def confirmation(
    kind: str = "SubscriptionConfirmation", subscribe_url: str = SUBSCRIBE_URL
) -> dict[str, Any]:
    return {
        "Type": kind,
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37",
        "TopicArn": TOPIC,
        "Message": "You have chosen to subscribe to the topic " + TOPIC,
        "SubscribeURL": subscribe_url,
        "Timestamp": "2026-12-03T10:00:00.000Z",
    }


def with_ses(settings: Settings, **values: bool) -> Settings:
    return settings.model_copy(update={"ses": settings.ses.model_copy(update=values)})


@asynccontextmanager
async def ingress(settings: Settings, sns: Sns) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    app.state.sns = SnsHttp(httpx.MockTransport(sns.handler))
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://mail.example.com") as http:
            yield http


async def post(http: httpx.AsyncClient, message: dict[str, Any] | bytes) -> httpx.Response:
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    return await http.post("/webhooks/ses", content=body, headers=TEXT)


async def enqueued(settings: Settings) -> list[SesWebhookV1]:
    """Every message on `ses-webhooks`, taken off it."""
    url = settings.queues.url_for("ses-webhooks")
    assert url is not None
    found: list[SesWebhookV1] = []
    async with aws_client(aws_session(settings.aws), settings.aws, "sqs") as sqs:
        while True:
            response = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            messages = response.get("Messages", [])
            if not messages:
                return found
            for message in messages:
                parsed = parse_message(message["Body"], "ses-webhooks")
                assert isinstance(parsed, SesWebhookV1)
                found.append(parsed)
            await sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )


async def test_notifications_signed_v1_and_v2_are_enqueued_and_the_certificate_fetched_once(
    tracking_settings: Settings, signer: Signer
) -> None:
    sns = Sns(signer.pem)
    async with ingress(tracking_settings, sns) as http:
        v1 = await post(http, signer.sign(notification("msg-v1", Subject="Amazon SES Email Event"), "1"))
        v2 = await post(http, signer.sign(notification("msg-v2"), "2"))

    assert (v1.status_code, v1.json()) == (200, {"status": "enqueued"})
    assert (v2.status_code, v2.json()) == (200, {"status": "enqueued"})
    assert sns.requests == [CERT_URL]
    messages = sorted(await enqueued(tracking_settings), key=lambda m: m.provider_event_id)
    assert [(m.provider_event_id, m.notification_type, m.ses_message_id) for m in messages] == [
        ("msg-v1", "bounce", "0100018c-ses-id"),
        ("msg-v2", "bounce", "0100018c-ses-id"),
    ]
    assert messages[0].metadata["ses"]["bounce"]["bounceType"] == "Permanent"


def _tampered(signer: Signer) -> dict[str, Any]:
    signed = signer.sign(notification())
    return {**signed, "Message": ses_bounce("0100018c-someone-elses-message")}


def _subject_added(signer: Signer) -> dict[str, Any]:
    return {**signer.sign(notification()), "Subject": "added after signing"}


def _other_key(signer: Signer) -> dict[str, Any]:
    return make_signer().sign(notification())


def _not_base64(signer: Signer) -> dict[str, Any]:
    return {**signer.sign(notification()), "Signature": "not base64 !"}


def _unsigned(signer: Signer) -> dict[str, Any]:
    signed = signer.sign(notification())
    del signed["Signature"]
    return signed


@pytest.mark.parametrize(
    "forge",
    [
        _tampered,
        _subject_added,
        _other_key,
        _not_base64,
        _unsigned,
        lambda s: s.sign(notification(), version="3"),
        lambda s: {**s.sign(notification()), "SignatureVersion": 2},
        lambda s: {**s.sign(notification()), "SignatureVersion": None},
        lambda s: (
            s.sign(confirmation("UnsubscribeConfirmation"))
            | {"SubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Other"}
        ),
    ],
    ids=[
        "tampered-message",
        "subject-added",
        "signed-by-another-key",
        "signature-not-base64",
        "no-signature",
        "signature-version-3",
        "signature-version-not-a-string",
        "no-signature-version",
        "unsubscribe-confirmation-tampered",
    ],
)
async def test_a_message_sns_did_not_sign_is_403_and_nothing_is_enqueued(
    tracking_settings: Settings, signer: Signer, forge: Callable[[Signer], dict[str, Any]]
) -> None:
    async with ingress(tracking_settings, Sns(signer.pem)) as http:
        response = await post(http, forge(signer))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "invalid_signature"
    assert await enqueued(tracking_settings) == []


FOREIGN_CERT_URLS = [
    "https://sns.us-east-1.amazonaws.com.evil.com/cert.pem",
    "https://evil.com/sns.us-east-1.amazonaws.com/cert.pem",
    "https://evil.com/sns.us-east-1.amazonaws.com.pem",
    "http://sns.us-east-1.amazonaws.com/cert.pem",
    "https://sns.us-east-1.amazonaws.com@evil.com/cert.pem",
    "https://evil.com#@sns.us-east-1.amazonaws.com/cert.pem",
    "https://sns.us-east-1.amazonaws.com:8443/cert.pem",
    "https://sns.us-east-1.amazonaws.com/cert.txt",
    "https://sns.us-east-1.amazonaws.com/cert.pem?x=1",
    "https://s3.us-east-1.amazonaws.com/cert.pem",
    "https://sns.amazonaws.com/cert.pem",
    "file:///etc/ssl/cert.pem",
]


async def test_a_certificate_url_off_https_sns_is_403_and_never_fetched(
    tracking_settings: Settings, signer: Signer
) -> None:
    sns = Sns(signer.pem)
    async with ingress(tracking_settings, sns) as http:
        for cert_url in FOREIGN_CERT_URLS:
            response = await post(http, signer.sign(notification(), cert_url=cert_url))
            assert response.status_code == 403, cert_url
    assert sns.requests == []
    assert await enqueued(tracking_settings) == []


@pytest.mark.parametrize(
    "url",
    [
        "https://sns.us-east-1.amazonaws.com/a.pem",
        "https://sns.us-gov-west-1.amazonaws.com/a.pem",
        "https://sns.cn-north-1.amazonaws.com.cn/a.pem",
        "https://SNS.EU-WEST-3.AMAZONAWS.COM/a.pem",
    ],
)
def test_sns_certificate_hosts_in_every_partition_are_accepted(url: str) -> None:
    assert is_sns_url(url, certificate=True)


async def test_an_expired_certificate_is_403(tracking_settings: Settings) -> None:
    expired = make_signer(not_after=-timedelta(days=1))
    async with ingress(tracking_settings, Sns(expired.pem)) as http:
        response = await post(http, expired.sign(notification()))
    assert response.status_code == 403
    assert await enqueued(tracking_settings) == []


async def test_a_certificate_that_cannot_be_fetched_is_403(
    tracking_settings: Settings, signer: Signer
) -> None:
    sns = Sns(b"<html>not found</html>")
    async with ingress(tracking_settings, sns) as http:
        response = await post(http, signer.sign(notification()))
    assert response.status_code == 403
    assert sns.requests == [CERT_URL]
    assert await enqueued(tracking_settings) == []


async def test_subscription_confirmation_is_only_acknowledged_when_auto_confirm_is_off(
    tracking_settings: Settings, signer: Signer
) -> None:
    sns = Sns(signer.pem)
    async with ingress(tracking_settings, sns) as http:
        response = await post(http, signer.sign(confirmation()))
    assert (response.status_code, response.json()) == (200, {"status": "acknowledged"})
    assert sns.requests == [CERT_URL]  # the SubscribeURL was never fetched
    assert await enqueued(tracking_settings) == []


async def test_subscription_confirmation_with_auto_confirm_fetches_the_sns_subscribe_url(
    tracking_settings: Settings, signer: Signer
) -> None:
    sns = Sns(signer.pem)
    async with ingress(with_ses(tracking_settings, sns_auto_confirm=True), sns) as http:
        response = await post(http, signer.sign(confirmation()))
    assert (response.status_code, response.json()) == (200, {"status": "confirmed"})
    assert sns.requests == [CERT_URL, SUBSCRIBE_URL]


@pytest.mark.parametrize(
    "subscribe_url",
    [
        "https://evil.com/?Action=ConfirmSubscription",
        "http://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription",
        "https://sns.us-east-1.amazonaws.com.evil.com/?Action=ConfirmSubscription",
    ],
)
async def test_auto_confirm_refuses_a_subscribe_url_off_https_sns(
    tracking_settings: Settings, signer: Signer, subscribe_url: str
) -> None:
    sns = Sns(signer.pem)
    async with ingress(with_ses(tracking_settings, sns_auto_confirm=True), sns) as http:
        response = await post(http, signer.sign(confirmation(subscribe_url=subscribe_url)))
    assert (response.status_code, response.json()) == (200, {"status": "refused"})
    assert sns.requests == [CERT_URL]


async def test_a_signed_unsubscribe_confirmation_is_acknowledged(
    tracking_settings: Settings, signer: Signer
) -> None:
    sns = Sns(signer.pem)
    async with ingress(with_ses(tracking_settings, sns_auto_confirm=True), sns) as http:
        response = await post(http, signer.sign(confirmation("UnsubscribeConfirmation"), "1"))
    assert (response.status_code, response.json()) == (200, {"status": "acknowledged"})
    assert sns.requests == [CERT_URL]
    assert await enqueued(tracking_settings) == []


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (b"not json", {"body": "invalid_json"}),
        (b'["Notification"]', {"body": "must_be_object"}),
        (b'{"Type": "Notification", "x": NaN}', {"body": "invalid_json"}),
        (json.dumps({"Type": "Other"}).encode(), {"Type": "invalid"}),
    ],
)
async def test_a_body_that_is_not_an_sns_message_is_400(
    tracking_settings: Settings, signer: Signer, body: bytes, fields: dict[str, str]
) -> None:
    async with ingress(tracking_settings, Sns(signer.pem)) as http:
        response = await post(http, body)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "validation_error",
        "message": response.json()["error"]["message"],
        "fields": fields,
    }
    assert await enqueued(tracking_settings) == []


async def test_a_signed_notification_that_is_not_from_ses_is_400(
    tracking_settings: Settings, signer: Signer
) -> None:
    async with ingress(tracking_settings, Sns(signer.pem)) as http:
        response = await post(http, signer.sign(notification(Message="hello")))
    assert response.status_code == 400
    assert await enqueued(tracking_settings) == []


async def test_a_body_over_the_limit_is_413(tracking_settings: Settings, signer: Signer) -> None:
    sns = Sns(signer.pem)
    async with ingress(tracking_settings, sns) as http:
        response = await post(http, signer.sign(notification(Message="x" * 600_000)))
    assert response.status_code == 413
    assert sns.requests == []
    assert await enqueued(tracking_settings) == []


async def test_local_mode_enqueues_an_unsigned_notification_without_fetching(
    tracking_settings: Settings, signer: Signer
) -> None:
    sns = Sns(signer.pem)
    async with ingress(with_ses(tracking_settings, sns_verify=False), sns) as http:
        response = await post(http, notification("local-1"))
    assert response.status_code == 200
    assert sns.requests == []
    assert [m.provider_event_id for m in await enqueued(tracking_settings)] == ["local-1"]


def test_production_refuses_to_start_with_verification_off(aws_endpoint: str) -> None:
    unverified = settings_for(
        "postgresql+asyncpg://nobody@127.0.0.1:9/none",
        aws_endpoint,
        DATAMAILER_ENV="production",
        SES_SNS_VERIFY="false",
    )
    with pytest.raises(RuntimeError, match="SES_SNS_VERIFY=false is refused with DATAMAILER_ENV=production"):
        create_app(unverified)
    verified = settings_for(
        "postgresql+asyncpg://nobody@127.0.0.1:9/none", aws_endpoint, DATAMAILER_ENV="production"
    )
    assert verified.ses.sns_verify
    assert not verified.ses.sns_auto_confirm
    create_app(verified)


async def test_the_certificate_cache_is_bounded_and_least_recently_used(signer: Signer) -> None:
    sns = Sns(signer.pem)
    urls = [f"https://sns.us-east-1.amazonaws.com/{n}.pem" for n in "abc"]
    certificates = SnsHttp(httpx.MockTransport(sns.handler), capacity=2)
    for url in [urls[0], urls[1], urls[0], urls[2], urls[0], urls[1]]:
        await certificates.public_key(url)
    # a, b fetched; a hit; c evicts b (a was used last); a hit; b fetched again.
    assert sns.requests == [urls[0], urls[1], urls[2], urls[1]]


async def test_a_notification_sqs_refuses_is_503_so_sns_retries(
    tracking_settings: Settings, signer: Signer
) -> None:
    url = tracking_settings.queues.url_for("ses-webhooks")
    missing = tracking_settings.model_copy(
        update={"queues": tracking_settings.queues.model_copy(update={"ses_webhooks_url": f"{url}-missing"})}
    )
    async with ingress(missing, Sns(signer.pem)) as http:
        response = await post(http, signer.sign(notification()))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "queue_unavailable"
    assert await enqueued(tracking_settings) == []
