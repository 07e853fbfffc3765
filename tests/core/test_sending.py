"""SES errors sorted into transient (retry via the queue) and permanent (fail the row)."""

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ParamValidationError, ReadTimeoutError

from datamailer_core.sending import PermanentSendError, SendResult, TransientSendError, send_via_ses


class FakeSes:
    def __init__(self, outcome: BaseException | dict[str, Any]) -> None:
        self.outcome = outcome

    async def send_email(self, **request: Any) -> dict[str, Any]:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def client_error(code: str, status: int, message: str = "nope") -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "SendEmail")


async def test_accepted_send_returns_the_ses_message_id() -> None:
    assert await send_via_ses(FakeSes({"MessageId": "0100-abc"}), {}) == SendResult("0100-abc")


@pytest.mark.parametrize(
    ("code", "status", "throttled"),
    [
        ("Throttling", 400, True),
        ("TooManyRequestsException", 429, True),
        ("LimitExceededException", 400, True),
        ("InternalServiceErrorException", 500, False),
        ("ServiceUnavailable", 503, False),
        ("SomethingNew", 502, False),
        ("AccessDeniedException", 403, False),
    ],
)
async def test_transient_answers_are_retried(code: str, status: int, throttled: bool) -> None:
    with pytest.raises(TransientSendError) as caught:
        await send_via_ses(FakeSes(client_error(code, status)), {})
    assert caught.value.code == code
    assert caught.value.throttled is throttled


@pytest.mark.parametrize(
    "error",
    [
        EndpointConnectionError(endpoint_url="https://email.us-east-1.amazonaws.com"),
        ReadTimeoutError(endpoint_url="https://email.us-east-1.amazonaws.com"),
        TimeoutError(),
        ConnectionResetError(),
    ],
)
async def test_connection_problems_and_timeouts_are_transient(error: BaseException) -> None:
    with pytest.raises(TransientSendError):
        await send_via_ses(FakeSes(error), {})


@pytest.mark.parametrize(
    "code",
    [
        "MessageRejected",
        "BadRequestException",
        "MailFromDomainNotVerifiedException",
        "NotFoundException",
        "AccountSuspendedException",
        "SendingPausedException",
        "InvalidParameterValue",
        "SomeOtherClientError",
    ],
)
async def test_permanent_answers_fail_with_code_and_message(code: str) -> None:
    with pytest.raises(PermanentSendError) as caught:
        await send_via_ses(FakeSes(client_error(code, 400, "Email address is not verified.")), {})
    assert caught.value.code == code
    assert caught.value.reason == f"{code}: Email address is not verified."


async def test_request_the_sdk_refuses_is_permanent() -> None:
    with pytest.raises(PermanentSendError):
        await send_via_ses(FakeSes(ParamValidationError(report="Missing Destination")), {})
