"""`datamailer up` as a newcomer runs it: embedded PostgreSQL, moto, real uvicorn servers."""

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from datamailer_server.localpg import free_port, port_in_use

KEY_LINE = re.compile(r"Demo API key:\s+(dm_\S+)")


class Up:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ports = {"api": free_port(), "tracking": free_port(), "pg": free_port(), "aws": free_port()}
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def start(self, timeout: float = 120) -> str:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DATABASE_URL", "AWS_", "SQS_", "SES_", "DATAMAILER_", "PG"))
        }
        argv = [sys.executable, "-m", "datamailer_server.main", "up", "--data-dir", str(self.data_dir)]
        for name in ("api", "tracking", "pg", "aws"):
            argv += [f"--{name}-port", str(self.ports[name])]
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.data_dir.parent,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if match := KEY_LINE.search(line):
                return match.group(1)
        self.stop()
        raise AssertionError("up did not print an API key:\n" + "".join(self.output))

    def url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.stdout:
                self.output.extend(self.proc.stdout.readlines())
                self.proc.stdout.close()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="dm-up-", dir="/tmp"))
    root.chmod(0o755)
    yield root / ".datamailer"
    subprocess.run(["rm", "-rf", str(root)], check=False)


def test_up_serves_the_demo_client_and_keeps_its_data_across_restarts(data_dir: Path) -> None:
    up = Up(data_dir)
    key = up.start()
    try:
        assert httpx.get(up.url("api", "/health")).status_code == 200
        assert httpx.get(up.url("tracking", "/health")).status_code == 200
        senders = httpx.get(up.url("api", "/api/client/senders"), headers={"Authorization": f"Bearer {key}"})
        assert senders.status_code == 200, senders.text
        body = senders.json()
        assert body["client"]["slug"] == "demo-app"
        assert body["senders"] == [{"id": "demo", "email": "Datamailer Demo <demo@example.com>"}]
        wrong = httpx.get(up.url("api", "/api/client/senders"), headers={"Authorization": f"Bearer {key}x"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        client_senders = {
            "default_sender_id": "news",
            "senders": [{"id": "news", "email": "News <news@example.com>"}],
        }
        changed = httpx.put(
            up.url("api", "/api/client/senders"),
            headers={"Authorization": f"Bearer {key}"},
            json=client_senders,
        )
        assert changed.status_code == 200, changed.text
    finally:
        assert up.stop() == 0, "".join(up.output)
    for name in ("api", "tracking", "pg", "aws"):
        assert not port_in_use(up.ports[name]), f"{name} still listening after Ctrl-C"

    again = Up(data_dir)
    again.ports = up.ports
    second_key = again.start()
    try:
        assert second_key == key
        senders = httpx.get(
            again.url("api", "/api/client/senders"), headers={"Authorization": f"Bearer {key}"}
        )
        assert senders.status_code == 200
        # The restart re-seeded the demo scope without overwriting the client's senders.
        assert senders.json()["senders"] == client_senders["senders"]
        assert senders.json()["default_sender_id"] == "news"
    finally:
        again.stop()


def test_up_reports_a_taken_port_in_one_line(data_dir: Path) -> None:
    up = Up(data_dir)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", up.ports["api"]))
        blocker.listen()
        assert up.proc is None
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "datamailer_server.main",
                "up",
                "--data-dir",
                str(data_dir),
                "--api-port",
                str(up.ports["api"]),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [f"error: port {up.ports['api']} (API) is already in use; pass --api-port"]
