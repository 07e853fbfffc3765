"""`datamailer worker` and `datamailer scheduler` as operators run them."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.workers.conftest import WorkerEnv

CLI = [sys.executable, "-m", "datamailer_server.main"]


def run_cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env={"PATH": os.environ.get("PATH", ""), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_unknown_queue_is_refused_in_one_line(worker_env: WorkerEnv, tmp_path: Path) -> None:
    result = run_cli(worker_env.environ(), tmp_path, "worker", "newsletters")

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "unknown queue 'newsletters'" in result.stderr


def test_scheduler_once_runs_every_job_and_reports_counts(worker_env: WorkerEnv, tmp_path: Path) -> None:
    result = run_cli(worker_env.environ(), tmp_path, "scheduler", "--once")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "transactional.requeue_lost: 0",
        "transactional.expire_leases: 0",
        "campaigns.expire_leases: 0",
        "campaigns.start_due: 0",
        "campaigns.advance: 0",
        "webhooks.dispatch: 0",
        "mailchimp.dispatch: 0",
        "health.publish: 0",
    ]


def test_worker_process_stops_cleanly_on_sigterm(worker_env: WorkerEnv, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [*CLI, "worker", "all", "--concurrency", "2"],
            env={"PATH": os.environ.get("PATH", ""), **worker_env.environ(LOG_LEVEL="INFO")},
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while "polling transactional-email" not in log.read_text():
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    assert code == 0, log.read_text()
    # Stopping does not wait out the 20 s long poll.
    assert time.monotonic() - started < 5
    assert "stopped polling transactional-email" in log.read_text()
