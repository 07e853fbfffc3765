"""The signed SendMessageBatch against moto's server: what it sends arrives whole, and
SQS's refusals come back as errors (retried only when a retry may help)."""

import json

import boto3
import httpx
import pytest

from datamailer_core.settings import AwsSettings
from datamailer_core.sqs_send import SqsCallFailed, endpoint_for, signed_sqs_sender
from datamailer_server.localpg import free_port
from tests.conftest import settings_for


@pytest.fixture
def aws(moto_endpoint: str) -> AwsSettings:
    httpx.post(f"{moto_endpoint}/moto-api/reset").raise_for_status()
    return settings_for("postgresql+asyncpg://unused/none", moto_endpoint).aws


async def test_a_batch_arrives_whole_and_answers_like_the_aioboto3_method(aws: AwsSettings) -> None:
    sqs = boto3.client("sqs", endpoint_url=aws.endpoint_url, region_name=aws.region,
                       aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip
    url = sqs.create_queue(QueueName="email-events")["QueueUrl"]
    bodies = [json.dumps({"n": n, "text": 'é "quoted" \\ \t'}) for n in range(10)]
    async with signed_sqs_sender(aws) as sender:
        answer = await sender.send_message_batch(
            QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": b} for n, b in enumerate(bodies)]
        )
    assert sorted(ok["Id"] for ok in answer["Successful"]) == [str(n) for n in range(10)]
    assert answer.get("Failed", []) == []
    received: list[str] = []
    while len(received) < 10:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        assert messages, "a message went missing"
        received += [m["Body"] for m in messages]
    assert sorted(received) == sorted(bodies)


async def test_a_refusal_is_an_error_and_not_retried(aws: AwsSettings) -> None:
    async with signed_sqs_sender(aws) as sender:
        with pytest.raises(SqsCallFailed, match="400") as raised:
            await sender.send_message_batch(
                QueueUrl=f"{aws.endpoint_url}/123456789012/no-such-queue",
                Entries=[{"Id": "0", "MessageBody": "{}"}],
            )
    assert not raised.value.retryable


async def test_an_unreachable_endpoint_is_an_error_after_the_retries() -> None:
    aws = settings_for("postgresql+asyncpg://unused/none", f"http://127.0.0.1:{free_port()}").aws
    async with signed_sqs_sender(aws) as sender:
        with pytest.raises(SqsCallFailed, match="unreachable"):
            await sender.send_message_batch(
                QueueUrl="http://x/1/q", Entries=[{"Id": "0", "MessageBody": "{}"}]
            )


def test_the_endpoint_is_the_one_botocore_would_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_SQS", raising=False)
    aws = settings_for("postgresql+asyncpg://unused/none").aws
    assert (
        endpoint_for(aws.model_copy(update={"endpoint_url": None})) == "https://sqs.us-east-1.amazonaws.com/"
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", "http://127.0.0.1:4566")
    assert endpoint_for(aws.model_copy(update={"endpoint_url": None})) == "http://127.0.0.1:4566/"
    assert endpoint_for(aws) == "http://127.0.0.1:9/"
