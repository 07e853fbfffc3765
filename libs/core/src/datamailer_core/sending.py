"""Calling SES v2 `SendEmail` (and `SendBulkEmail`) and classifying what went wrong.

Transient (retry via the queue with backoff): throttling, timeouts, 5xx, connection
errors, and credential/permission errors an operator can fix without touching the
message. Permanent (row `failed` with the reason, record acknowledged): the message
itself or the account cannot send it (MessageRejected, invalid parameters, unverified
MAIL FROM domain, missing configuration set, account suspended or sending paused).
The SES v2 SendEmail error codes are TooManyRequestsException, LimitExceededException,
AccountSuspendedException, SendingPausedException, MessageRejected,
MailFromDomainNotVerifiedException, NotFoundException and BadRequestException.
"""

import logging
import time
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from botocore import exceptions as boto_errors
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
)

THROTTLING_CODES: Final = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "LimitExceededException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "SlowDown",
    }
)
TRANSIENT_CODES: Final = frozenset(
    {
        "InternalFailure",
        "InternalError",
        "InternalServiceErrorException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        # Credentials and permissions: fixed by an operator, the message is still good.
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "AccessDeniedException",
    }
)
PERMANENT_CODES: Final = frozenset(
    {
        "MessageRejected",
        "BadRequestException",
        "InvalidParameterValue",
        "InvalidParameterCombination",
        "ValidationException",
        "ValidationError",
        "MailFromDomainNotVerifiedException",
        "MailFromDomainNotVerified",
        "NotFoundException",
        "ConfigurationSetDoesNotExist",
        "ConfigurationSetDoesNotExistException",
        "AccountSuspendedException",
        "SendingPausedException",
        "AccountSendingPausedException",
        "ConfigurationSetSendingPausedException",
    }
)
MAX_REASON_LENGTH: Final = 500

logger = logging.getLogger("datamailer.ses")


@dataclass(frozen=True)
class SendResult:
    message_id: str


class SendError(Exception):
    """`code` is the provider's error code (or the exception type); `reason` is what is
    stored on the row: `<code>: <message>`, bounded."""

    def __init__(self, code: str, message: str = "") -> None:
        self.code = code
        self.reason = (f"{code}: {message}" if message else code)[:MAX_REASON_LENGTH]
        super().__init__(self.reason)


class TransientSendError(SendError):
    @property
    def throttled(self) -> bool:
        return self.code in THROTTLING_CODES


class PermanentSendError(SendError):
    pass


def classify_client_error(exc: ClientError) -> SendError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code") or "Unknown")
    message = str(error.get("Message") or "")
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if code in THROTTLING_CODES or code in TRANSIENT_CODES:
        return TransientSendError(code, message)
    if code in PERMANENT_CODES:
        return PermanentSendError(code, message)
    if status == 429 or status >= 500:
        return TransientSendError(code, message)
    # Any other 4xx is about this request: sending it again gives the same answer.
    return PermanentSendError(code, message)


async def send_via_ses(sesv2: Any, request: dict[str, Any]) -> SendResult:
    """One SES v2 SendEmail call; raises TransientSendError or PermanentSendError."""
    response = await _call(sesv2.send_email, request)
    message_id = response.get("MessageId")
    if not message_id:
        raise TransientSendError("MissingMessageId", "SES answered without a MessageId")
    return SendResult(message_id=str(message_id))


async def send_bulk_via_ses(sesv2: Any, request: dict[str, Any]) -> list[dict[str, Any]]:
    """One SES v2 SendBulkEmail call: its `BulkEmailEntryResults`, one per entry in
    order; raises TransientSendError or PermanentSendError for the whole call (also
    when SES answers with another number of results than entries)."""
    response = await _call(sesv2.send_bulk_email, request)
    results = list(response.get("BulkEmailEntryResults") or [])
    if len(results) != len(request["BulkEmailEntries"]):
        raise TransientSendError(
            "BulkResultMismatch", f"{len(results)} results for {len(request['BulkEmailEntries'])} entries"
        )
    return results


async def _call(method: Any, request: dict[str, Any]) -> dict[str, Any]:
    """The SES call and its one log line (operation, outcome, duration; no addresses),
    which carries the flow's correlation id like every other line."""
    operation = "SendBulkEmail" if "BulkEmailEntries" in request else "SendEmail"
    start = time.perf_counter()
    try:
        response: dict[str, Any] = await _classified(method, request)
    except SendError as exc:
        logger.warning(
            "SES %s refused",
            operation,
            extra={
                "operation": operation,
                "error_code": exc.code,
                "transient": isinstance(exc, TransientSendError),
                "duration_ms": round((time.perf_counter() - start) * 1000, 1),
            },
        )
        raise
    extra: dict[str, Any] = {
        "operation": operation,
        "duration_ms": round((time.perf_counter() - start) * 1000, 1),
    }
    if "MessageId" in response:
        extra["ses_message_id"] = response["MessageId"]
    else:
        extra["entries"] = len(request.get("BulkEmailEntries") or ())
    logger.info("SES %s accepted", operation, extra=extra)
    return response


async def _classified(method: Any, request: dict[str, Any]) -> dict[str, Any]:
    try:
        response: dict[str, Any] = await method(**request)
    except ClientError as exc:
        raise classify_client_error(exc) from exc
    except ParamValidationError as exc:
        raise PermanentSendError("InvalidParameterValue", str(exc)) from exc
    except (HTTPClientError, boto_errors.ConnectionError, NoCredentialsError) as exc:
        raise TransientSendError(type(exc).__name__, str(exc)) from exc
    except (TimeoutError, OSError, aiohttp.ClientError) as exc:
        raise TransientSendError(type(exc).__name__, str(exc)) from exc
    except BotoCoreError as exc:
        raise TransientSendError(type(exc).__name__, str(exc)) from exc
    return response
