"""One account-wide send rate across worker processes (spec/queues.md, "Rate")."""

import asyncio
import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from datamailer_core.contracts import TransactionalEmailV1
from datamailer_core.models import TransactionalMessage
from datamailer_workers.deps import open_deps
from tests.workers.conftest import WorkerEnv
from tests.workers.helpers import SENDER, seed_client, sent_mail, statuses

RATE = 20
BACKLOG = 300
PROCESSES = 3
# The bucket holds SES_SEND_BURST_SECONDS (default 1) × rate tokens: after idling, up
# to that many sends may go at once; everything after is paced at the rate.
BURST = RATE * 1
LATENCY = 0.5


def spawn_worker(env: dict[str, str], cwd: Path, n: int) -> subprocess.Popen[bytes]:
    # cwd: a folder without a .env, so only `env` configures the process.
    with open(cwd / f"worker-{n}.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "datamailer_server.main", "worker", "transactional-email"],
            env={"PATH": os.environ.get("PATH", ""), **env},
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.slow
async def test_three_worker_processes_send_a_backlog_at_the_account_rate(
    worker_env: WorkerEnv, tmp_path: Path
) -> None:
    settings = worker_env.settings(SES_MAX_SEND_RATE=str(RATE))
    async with open_deps(settings) as deps:
        seeded = await seed_client(deps)
        async with deps.sessionmaker() as session, session.begin():
            rows = [
                TransactionalMessage(
                    client_id=seeded.client_id,
                    template_key="reset",
                    email=f"user{i}@example.com",
                    sender_id=SENDER["id"],
                    from_address=SENDER["email"],
                    subject=f"Message {i}",
                    text_body="Hello",
                    status="queued",
                    idempotency_key=f"backlog-{i}",
                )
                for i in range(BACKLOG)
            ]
            session.add_all(rows)
        await deps.publisher.publish_batch(
            [
                TransactionalEmailV1(
                    transactional_message_id=r.id, client_id=r.client_id, idempotency_key=r.idempotency_key
                )
                for r in rows
            ]
        )

        env = worker_env.environ(SES_MAX_SEND_RATE=str(RATE), WORKER_CONCURRENCY="10")
        workers = [spawn_worker(env, tmp_path, n) for n in range(PROCESSES)]
        try:
            async with asyncio.timeout(90):
                while (await statuses(deps)).get("sent", 0) < BACKLOG:
                    assert all(w.poll() is None for w in workers), "a worker exited"
                    await asyncio.sleep(0.5)
        finally:
            for w in workers:
                if w.poll() is None:
                    w.send_signal(signal.SIGTERM)
            codes = [w.wait(timeout=30) for w in workers]
        # SIGTERM is a graceful stop: in-flight records finish, the process exits 0.
        assert codes == [0] * PROCESSES, [
            (tmp_path / f"worker-{n}.log").read_text() for n in range(PROCESSES)
        ]

        async with deps.sessionmaker() as session:
            sent_at: list[datetime] = sorted(
                t
                for t in (await session.scalars(select(TransactionalMessage.sent_at))).all()
                if t is not None
            )
        limiter_state = await deps.rate_limiter.state()

    assert len(sent_at) == BACKLOG
    assert len(sent_mail(worker_env.aws_endpoint)) == BACKLOG
    times = [(t - sent_at[0]).total_seconds() for t in sent_at]
    duration = times[-1]
    histogram = [sum(1 for u in times if s <= u < s + 1) for s in range(int(duration) + 1)]
    # Over the run: everything beyond the initial burst took at least (n - burst) / rate.
    overall = (BACKLOG - BURST) / duration
    assert overall <= RATE * 1.03, (overall, histogram)
    # In any window of T seconds a token bucket grants at most burst + rate × T; `sent_at`
    # is recorded after the SES call, so allow that latency (LATENCY) on top.
    for window in (1.0, 2.0, 5.0):
        worst = max(sum(1 for u in times[i:] if u < t + window) for i, t in enumerate(times))
        assert worst <= BURST + RATE * (window + LATENCY), (window, worst, histogram)
    # Once the burst is spent, each whole second holds no more than the rate.
    assert max(histogram[3:-1], default=0) <= RATE + 2, histogram
    assert limiter_state is not None
    assert limiter_state.rate == RATE
