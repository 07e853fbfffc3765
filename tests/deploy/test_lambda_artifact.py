"""The Lambda zip works on its own: unpacked beside a bare interpreter (no project in its
environment), its handler takes SQS event-source batches received from the real queues,
sends, records and reports exactly the bad records in `batchItemFailures`."""

import asyncio
import json
import os
import subprocess
import zipfile
from pathlib import Path
from typing import Any

from sqlalchemy import text

from datamailer_core.contracts import QueueName, dump_message
from datamailer_server.lambda_zip import HANDLER
from datamailer_workers import campaign_jobs
from datamailer_workers.deps import WorkerDeps
from tests.api.campaign_factories import Group, builder, create_campaign
from tests.core import ses_samples as samples
from tests.workers.campaign_helpers import FEED, sending_tenant
from tests.workers.campaign_helpers import queue as queue_campaign
from tests.workers.conftest import WorkerEnv
from tests.workers.helpers import insert_queued, load, publish, seed_client, send_raw, sent_mail
from tests.workers.test_email_events import event, recipient, sent_campaign

# Runs inside the bare interpreter: what the Lambda runtime does with the handler string.
INVOKE = """
import importlib, json, sys
module, _, name = sys.argv[1].rpartition(".")
handler = getattr(importlib.import_module(module), name)
event = json.load(sys.stdin)
result = handler(event, None)
with open(sys.argv[2], "w") as out:
    json.dump({"result": result, "module": sys.modules[module].__file__, "path": sys.path}, out)
"""


class Function:
    """One Lambda function: the unpacked zip run by a bare interpreter per invocation."""

    def __init__(self, python: Path, task_root: Path, environ: dict[str, str], scratch: Path) -> None:
        self.python, self.task_root, self.environ, self.scratch = python, task_root, environ, scratch
        self.calls = 0

    def _run(self, event: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        out = self.scratch / f"result-{self.calls}.json"
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(self.task_root), "PYTHONNOUSERSITE": "1"}
        done = subprocess.run(
            [str(self.python), "-c", INVOKE, HANDLER, str(out)],
            input=json.dumps(event),
            env=env | self.environ,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        answer: dict[str, Any] = json.loads(out.read_text())
        assert Path(answer["module"]).is_relative_to(self.task_root)
        return answer

    async def invoke(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        answer = await asyncio.to_thread(self._run, {"Records": records})
        result: dict[str, Any] = answer["result"]
        return result


def function(bare_python: Path, lambda_root: Path, worker_env: WorkerEnv, tmp_path: Path) -> Function:
    return Function(bare_python, lambda_root, worker_env.environ(), tmp_path)


async def receive(deps: WorkerDeps, queue: QueueName, count: int) -> list[dict[str, Any]]:
    """`count` messages taken from the queue, shaped as the SQS event source hands them
    to the function."""
    url = deps.publisher.url(queue)
    attributes = await deps.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    arn = attributes["Attributes"]["QueueArn"]
    taken: list[dict[str, Any]] = []
    async with asyncio.timeout(60):
        while len(taken) < count:
            response = await deps.sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            taken += response.get("Messages", [])
    return [
        {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": message.get("Attributes", {}),
            "messageAttributes": message.get("MessageAttributes", {}),
            "md5OfBody": message["MD5OfBody"],
            "eventSource": "aws:sqs",
            "eventSourceARN": arn,
            "awsRegion": "us-east-1",
        }
        for message in taken
    ]


def failures(*message_ids: str) -> dict[str, Any]:
    return {"batchItemFailures": [{"itemIdentifier": m} for m in message_ids]}


def test_the_zip_holds_the_workers_and_their_dependencies_only(lambda_artifact: Path) -> None:
    with zipfile.ZipFile(lambda_artifact) as archive:
        names = archive.namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert {"datamailer_core", "datamailer_workers", "sqlalchemy", "asyncpg", "aioboto3", "pydantic"} <= top
    assert "datamailer_workers/lambda_handler.py" in names
    unwanted = {"datamailer_api", "datamailer_tracking", "datamailer_web", "datamailer_server"}
    unwanted |= {"fastapi", "uvicorn", "moto", "pytest", "mypy", "ruff", "bin"}
    assert not top & unwanted
    assert not [name for name in names if name.endswith(".pyc") or "__pycache__" in name]


async def test_a_transactional_batch_sends_and_reports_the_malformed_record(
    deps: WorkerDeps, worker_env: WorkerEnv, bare_python: Path, lambda_root: Path, tmp_path: Path
) -> None:
    seeded = await seed_client(deps)
    message = await insert_queued(deps, seeded)
    await publish(deps, message)
    await send_raw(deps, "{not json")
    records = await receive(deps, "transactional-email", 2)
    bad = next(r["messageId"] for r in records if r["body"] == "{not json")

    result = await function(bare_python, lambda_root, worker_env, tmp_path).invoke(records)

    assert result == failures(bad)
    sent = await load(deps, message.id)
    assert sent.status == "sent"
    assert sent.ses_message_id is not None
    assert [mail.destinations for mail in sent_mail(worker_env.aws_endpoint)] == [
        {"ToAddresses": ["ada@example.com"]}
    ]


async def test_ses_feedback_marks_the_sent_message_delivered(
    deps: WorkerDeps, worker_env: WorkerEnv, bare_python: Path, lambda_root: Path, tmp_path: Path
) -> None:
    seeded = await seed_client(deps)
    message = await insert_queued(deps, seeded)
    lambda_function = function(bare_python, lambda_root, worker_env, tmp_path)
    await publish(deps, message)
    assert await lambda_function.invoke(await receive(deps, "transactional-email", 1)) == failures()
    ses_message_id = (await load(deps, message.id)).ses_message_id
    assert ses_message_id is not None

    delivery = samples.sns_envelope(samples.delivery(ses_message_id, "ada@example.com"))
    await send_raw(deps, json.dumps(delivery), "ses-webhooks")
    await send_raw(deps, json.dumps({"Type": "Notification", "Message": "not ses"}), "ses-webhooks")
    records = await receive(deps, "ses-webhooks", 2)
    bad = next(r["messageId"] for r in records if "not ses" in r["body"])

    assert await lambda_function.invoke(records) == failures(bad)
    delivered = await load(deps, message.id)
    assert (delivered.status, delivered.delivered_at is not None) == ("sent", True)


async def test_a_campaign_batch_sends_to_its_recipients(
    deps: WorkerDeps, worker_env: WorkerEnv, bare_python: Path, lambda_root: Path, tmp_path: Path
) -> None:
    tenant = await sending_tenant(deps)
    async with deps.sessionmaker() as session:
        await builder(session, tenant).add(Group(3))
        await session.commit()
    async with deps.sessionmaker() as session:
        campaign = await create_campaign(session, tenant, "dec", sender_id="news", text_body="Hi {{ email }}")
    await queue_campaign(deps, campaign.id)
    await campaign_jobs.start_due_campaigns(deps.sessionmaker)
    async with asyncio.timeout(60):
        while not await campaign_jobs.advance_campaigns(
            deps.sessionmaker, deps.publisher, FEED, budget_seconds=0
        ):
            await asyncio.sleep(0.1)
    records = await receive(deps, "campaign-email", 1)

    assert await function(bare_python, lambda_root, worker_env, tmp_path).invoke(records) == failures()
    async with deps.sessionmaker() as session:
        rows = await session.execute(
            text(
                "SELECT status, count(*) AS n FROM campaign_recipients WHERE campaign_id = :c GROUP BY status"
            ),
            {"c": campaign.id},
        )
        assert {row.status: row.n for row in rows} == {"sent": 3}


async def test_tracking_events_are_recorded_once_per_idempotency_key(
    deps: WorkerDeps, worker_env: WorkerEnv, bare_python: Path, lambda_root: Path, tmp_path: Path
) -> None:
    _, [token] = await sent_campaign(deps, 1)
    click = dump_message(event("click", token))
    for body in (click, click, json.dumps({"contract": "email-events", "version": 9})):
        await send_raw(deps, body, "email-events")
    records = await receive(deps, "email-events", 3)
    bad = next(r["messageId"] for r in records if '"version": 9' in r["body"])

    assert await function(bare_python, lambda_root, worker_env, tmp_path).invoke(records) == failures(bad)
    clicked = await recipient(deps, token)
    assert clicked.first_clicked_at is not None
    async with deps.sessionmaker() as session:
        count = await session.scalar(text("SELECT count(*) FROM email_events WHERE event_type = 'click'"))
    assert count == 1
