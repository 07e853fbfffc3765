"""The two adapters over one dispatch: bad records fail alone (Lambda lists exactly them;
the poller leaves them, and they reach the DLQ), visibility is extended while a record
is in progress, and a stop finishes what is in flight."""

import asyncio
import json
import threading
from typing import Any

from datamailer_core.contracts import TransactionalEmailV1
from datamailer_workers.deps import WorkerDeps
from datamailer_workers.lambda_handler import LambdaRuntime, process_batch, queue_of
from datamailer_workers.poller import QueuePoller
from tests.workers.conftest import WorkerEnv
from tests.workers.helpers import (
    body_of,
    insert_queued,
    publish,
    queue_depth,
    run_poller_until,
    seed_client,
    send_raw,
    sent_mail,
    set_queue_attributes,
    statuses,
)

ARN = "arn:aws:sqs:us-east-1:123456789012:transactional-email"
BAD_BODIES = [
    "{not json",
    json.dumps({"contract": "newsletter-email", "version": 1, "transactional_message_id": 1}),
    json.dumps(
        {"contract": "transactional-email", "version": 2, "transactional_message_id": 1, "client_id": 1}
        | {"idempotency_key": "k"}
    ),
]


def record(message_id: str, body: str) -> dict[str, Any]:
    return {
        "messageId": message_id,
        "receiptHandle": f"handle-{message_id}",
        "body": body,
        "attributes": {"ApproximateReceiveCount": "1"},
        "eventSource": "aws:sqs",
        "eventSourceARN": ARN,
    }


async def test_lambda_batch_reports_exactly_the_bad_records(deps: WorkerDeps, worker_env: WorkerEnv) -> None:
    seeded = await seed_client(deps)
    good = [await insert_queued(deps, seeded, to=f"user{i}@example.com") for i in range(2)]
    records = [
        record("good-0", body_of(good[0])),
        record("bad-json", BAD_BODIES[0]),
        record("bad-contract", BAD_BODIES[1]),
        record("good-1", body_of(good[1])),
        record("bad-version", BAD_BODIES[2]),
    ]

    result = await process_batch(records, deps)

    assert result == {
        "batchItemFailures": [
            {"itemIdentifier": "bad-json"},
            {"itemIdentifier": "bad-contract"},
            {"itemIdentifier": "bad-version"},
        ]
    }
    assert await statuses(deps) == {"sent": 2}
    assert len(sent_mail(worker_env.aws_endpoint)) == 2


def test_lambda_queue_is_read_from_the_event_source_arn() -> None:
    assert queue_of(ARN) == "transactional-email"
    assert queue_of("arn:aws:sqs:eu-west-1:1:datamailer-prod-campaign-email") == "campaign-email"
    assert queue_of("arn:aws:sqs:eu-west-1:1:transactional-email-dlq") is None
    assert queue_of("arn:aws:sqs:eu-west-1:1:something-else") is None
    assert queue_of(None) is None


async def test_lambda_container_keeps_one_loop_and_one_set_of_clients(worker_env: WorkerEnv) -> None:
    settings = worker_env.settings()
    runtime = LambdaRuntime(lambda: settings)
    seen: list[tuple[object, object, dict[str, Any]]] = []

    def invoke_twice() -> None:
        # The Lambda runtime calls the handler synchronously, from a thread of its own.
        try:
            for body in ("{not json", "{still not json"):
                result = runtime.handle({"Records": [record("m", body)]})
                seen.append((runtime.loop, runtime.deps, result))
        finally:
            runtime.close()

    thread = threading.Thread(target=invoke_twice)
    thread.start()
    await asyncio.to_thread(thread.join, 30)

    assert len(seen) == 2
    assert seen[0][0] is seen[1][0]
    assert seen[0][1] is seen[1][1]
    assert seen[0][1] is not None
    assert all(result == {"batchItemFailures": [{"itemIdentifier": "m"}]} for *_, result in seen)


async def test_poller_leaves_bad_records_which_end_in_the_dlq(
    deps: WorkerDeps, worker_env: WorkerEnv
) -> None:
    # A short visibility and two receives before redrive keep the test quick.
    dlq_url = (await deps.sqs.get_queue_url(QueueName="transactional-email-dlq"))["QueueUrl"]
    dlq_arn = (await deps.sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"]))[
        "Attributes"
    ]["QueueArn"]
    await set_queue_attributes(
        deps,
        "transactional-email",
        VisibilityTimeout="1",
        RedrivePolicy=json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"}),
    )
    seeded = await seed_client(deps)
    good = [await insert_queued(deps, seeded, to=f"user{i}@example.com") for i in range(3)]
    for message in good[:2]:
        await publish(deps, message)
    for body in BAD_BODIES:
        await send_raw(deps, body)
    await publish(deps, good[2])

    async def settled() -> bool:
        return await queue_depth(deps, "transactional-email-dlq") == len(BAD_BODIES)

    await run_poller_until(deps, settled, timeout=20)

    assert await statuses(deps) == {"sent": 3}
    assert len(sent_mail(worker_env.aws_endpoint)) == 3
    assert await queue_depth(deps, "transactional-email") == 0
    dead = await deps.sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10)
    assert sorted(m["Body"] for m in dead["Messages"]) == sorted(BAD_BODIES)


async def test_poller_extends_visibility_while_a_record_is_in_progress(deps: WorkerDeps) -> None:
    await set_queue_attributes(deps, "transactional-email", VisibilityTimeout="1")
    calls: list[int] = []

    async def slow(message: TransactionalEmailV1, deps: WorkerDeps) -> None:
        calls.append(message.transactional_message_id)
        await asyncio.sleep(3)

    await deps.publisher.publish(
        TransactionalEmailV1(transactional_message_id=7, client_id=1, idempotency_key="k")
    )

    async def drained() -> bool:
        return await queue_depth(deps, "transactional-email") == 0

    # Two pollers compete: without the extension the other would receive it after 1 s.
    other_stop = asyncio.Event()
    other = QueuePoller(
        deps, "transactional-email", concurrency=2, wait_seconds=1, handlers={"transactional-email": slow}
    )
    other_task = asyncio.create_task(other.run(other_stop))
    try:
        await run_poller_until(deps, drained, handlers={"transactional-email": slow}, timeout=10)
    finally:
        other_stop.set()
        await other_task
    assert calls == [7]


async def test_stopping_the_poller_finishes_the_record_in_progress(deps: WorkerDeps) -> None:
    started, finished = asyncio.Event(), asyncio.Event()

    async def slow(message: TransactionalEmailV1, deps: WorkerDeps) -> None:
        started.set()
        await asyncio.sleep(1)
        finished.set()

    await deps.publisher.publish(
        TransactionalEmailV1(transactional_message_id=7, client_id=1, idempotency_key="k")
    )
    stop = asyncio.Event()
    poller = QueuePoller(
        deps, "transactional-email", concurrency=2, wait_seconds=20, handlers={"transactional-email": slow}
    )
    task = asyncio.create_task(poller.run(stop))
    await asyncio.wait_for(started.wait(), 10)
    stop.set()
    await asyncio.wait_for(task, 5)

    assert finished.is_set()
    assert await queue_depth(deps, "transactional-email") == 0


async def test_stopping_an_idle_poller_does_not_wait_for_the_long_poll(deps: WorkerDeps) -> None:
    stop = asyncio.Event()
    poller = QueuePoller(deps, "transactional-email", concurrency=2, wait_seconds=20)
    task = asyncio.create_task(poller.run(stop))
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait_for(task, 2)
