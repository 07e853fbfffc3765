"""`datamailer up`: the whole system on one machine with embedded defaults.

PostgreSQL is embedded (data under the data dir, kept across runs) unless DATABASE_URL is
set; moto's server is the local SQS/SES endpoint unless AWS_ENDPOINT_URL or real AWS
credentials are configured. Queues, migrations and a demo tenant are set up, then the
services run as child processes until Ctrl-C stops them all.
"""

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path

from datamailer_core.errors import DatamailerError
from datamailer_core.security import parse_api_key
from datamailer_core.settings import Settings
from datamailer_server import ops
from datamailer_server.localaws import endpoint_url, moto_server_argv, wait_until_ready
from datamailer_server.localpg import LocalPostgres, LocalPostgresError, port_in_use

DEMO = {"organization": "demo", "audience": "newsletter", "client": "demo-app"}
DEMO_SENDER = {"id": "demo", "email": "Datamailer Demo <demo@example.com>"}
DEMO_KEY_NAME = "demo"
DATABASE = "datamailer"

# Later services add themselves here (workers, scheduler): `up` starts each of them.
SERVICE_COMMANDS: list[list[str]] = []
SERVICE_COMMANDS.append(["worker", "all"])
SERVICE_COMMANDS.append(["scheduler"])


def say(message: str) -> None:
    print(message, flush=True)  # noqa: T201  (this is the command's output)


@dataclass
class LocalStack:
    data_dir: Path
    api_port: int
    tracking_port: int
    pg_port: int
    aws_port: int
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    postgres: LocalPostgres | None = None

    def run(self) -> int:
        for name, port in (("API", self.api_port), ("tracking", self.tracking_port)):
            if port_in_use(port):
                raise DatamailerError(f"port {port} ({name}) is already in use; pass --{name.lower()}-port")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, DATAMAILER_ENV=os.environ.get("DATAMAILER_ENV", "local"))
        env.setdefault("PUBLIC_BASE_URL", f"http://localhost:{self.tracking_port}")
        try:
            self._start_database(env)
            self._start_aws(env)
            os.environ.update(env)
            key = asyncio.run(self._prepare(Settings(), env))
            self._start_services(env)
            self._write_operator_env(env)
            self._banner(key)
            return self._supervise()
        except LocalPostgresError as exc:
            raise DatamailerError(f"PostgreSQL could not start: {exc}") from None
        finally:
            self._stop_all()

    def _start_database(self, env: dict[str, str]) -> None:
        if env.get("DATABASE_URL"):
            say(f"database: {env['DATABASE_URL'].split('@')[-1]} (from DATABASE_URL)")
            return
        pg_dir = postgres_data_dir(self.data_dir)
        self.postgres = LocalPostgres(pg_dir, self.pg_port)
        self.postgres.start()
        self.postgres.create_database(DATABASE)
        env["DATABASE_URL"] = self.postgres.url(DATABASE)
        say(f"database: embedded PostgreSQL on 127.0.0.1:{self.pg_port}, data in {pg_dir}")

    def _start_aws(self, env: dict[str, str]) -> None:
        if env.get("AWS_ENDPOINT_URL") or env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_PROFILE"):
            say(f"aws: {env.get('AWS_ENDPOINT_URL') or 'AWS with the configured credentials'}")
            return
        if port_in_use(self.aws_port):
            raise DatamailerError(f"port {self.aws_port} (local AWS endpoint) is in use; pass --aws-port")
        endpoint = endpoint_url("127.0.0.1", self.aws_port)
        with open(self.data_dir / "moto.log", "ab") as log:
            argv = moto_server_argv("127.0.0.1", self.aws_port)
            moto = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        self.children.append(("aws", moto))
        wait_until_ready(endpoint)
        env.setdefault("CAMPAIGN_BULK_SEND", "false")  # moto's server has no SendBulkEmail
        env.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",  # noqa: S105  (moto's placeholder)
            AWS_REGION=env.get("AWS_REGION", "us-east-1"),
        )
        say(f"aws: moto server on {endpoint} (SQS and SES, in memory)")

    async def _prepare(self, settings: Settings, env: dict[str, str]) -> str | None:
        urls = await ops.create_queues(settings)
        for name, url in urls.items():
            env[ops.QUEUE_ENV[name]] = url
        await asyncio.to_thread(ops.migrate, settings)
        await ops.provision(settings, **DEMO)
        # Senders a client set through the API survive a restart; they are (re)verified in
        # moto's in-memory SES like the demo one.
        senders = await ops.seed_senders(settings, DEMO["client"], [DEMO_SENDER], DEMO_SENDER["id"])
        if settings.aws.endpoint_url:
            await ops.verify_sender_identities(settings, [parseaddr(s["email"])[1] for s in senders])
        return await self._demo_key(settings)

    async def _demo_key(self, settings: Settings) -> str | None:
        """The demo key is issued once; locally its raw value is kept in the data dir (0600)
        so a restarted `up` can show it again. The database only ever holds its hash."""
        keyfile = self.data_dir / "demo-api-key"
        saved = keyfile.read_text().strip() if keyfile.exists() else None
        active = {
            row["key"]: row
            for row in await ops.list_keys(settings, DEMO["client"])
            if row["revoked_at"] == "-"
        }
        if saved and f"dm_{parse_api_key(saved)}" in active:
            return saved
        for key, row in active.items():
            if row["name"] == DEMO_KEY_NAME:
                await ops.revoke_key(settings, key)
        issued = await ops.create_key(settings, DEMO["client"], DEMO_KEY_NAME)
        keyfile.touch(mode=0o600)
        keyfile.write_text(issued.raw + "\n")
        return issued.raw

    def _start_services(self, env: dict[str, str]) -> None:
        cli = [sys.executable, "-m", "datamailer_server.main"]
        commands = [
            ("api", [*cli, "api", "--port", str(self.api_port)]),
            ("tracking", [*cli, "tracking", "--port", str(self.tracking_port)]),
            *((c[0], [*cli, *c]) for c in SERVICE_COMMANDS),
        ]
        for name, argv in commands:
            self.children.append((name, subprocess.Popen(argv, env=env, start_new_session=True)))
        _wait_http(f"http://127.0.0.1:{self.api_port}/health", "API")
        _wait_http(f"http://127.0.0.1:{self.tracking_port}/health", "tracking")

    def _write_operator_env(self, env: dict[str, str]) -> None:
        """The running stack's connection settings, for operator commands in another
        shell (`set -a; . .datamailer/env; set +a; datamailer campaigns status 1`)."""
        names = (
            "DATABASE_URL",
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
        )
        lines = [f"{name}={env[name]}" for name in (*names, *ops.QUEUE_ENV.values()) if env.get(name)]
        path = self.data_dir / "env"
        path.touch(mode=0o600)
        path.write_text("\n".join(lines) + "\n")

    def _banner(self, key: str | None) -> None:
        say("")
        say(
            f"Datamailer is up. API http://localhost:{self.api_port}  tracking http://localhost:{self.tracking_port}"
        )
        say(f"API docs:      http://localhost:{self.api_port}/docs")
        say("Demo scope:    " + " ".join(f"{k}={v}" for k, v in DEMO.items()))
        say(f"Demo sender:   {DEMO_SENDER['id']} = {DEMO_SENDER['email']}")
        say(f"Demo API key:  {key}")
        senders_url = f"localhost:{self.api_port}/api/client/senders"
        say(f'Try:           curl -H "Authorization: Bearer {key}" {senders_url}')
        say(f"Operator CLI:  set -a; . {self.data_dir}/env; set +a; .venv/bin/datamailer campaigns status 1")
        say("Ctrl-C stops everything; data is kept for the next `make up`.")

    def _supervise(self) -> int:
        stop = {"signal": False}

        def on_signal(signum: int, frame: object) -> None:
            stop["signal"] = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stop["signal"]:
            for name, proc in self.children:
                if proc.poll() is not None:
                    say(f"{name} exited with code {proc.returncode}; stopping everything")
                    return 1
            time.sleep(0.5)
        say("stopping...")
        return 0

    def _stop_all(self) -> None:
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, proc in reversed(self.children):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        self.children.clear()
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None


def postgres_data_dir(data_dir: Path) -> Path:
    """Where the embedded cluster keeps its data. As root the server runs as an unprivileged
    user, who cannot reach a folder under a private home (/root is 0700): then the data
    lives under /var/lib/datamailer instead, one folder per checkout."""
    wanted = data_dir / "postgres"
    if os.geteuid() != 0 or all(p.stat().st_mode & 0o001 for p in data_dir.parents if p.exists()):
        return wanted
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    fallback = Path("/var/lib/datamailer") / digest / "postgres"
    fallback.parent.mkdir(parents=True, exist_ok=True)
    fallback.parent.chmod(0o755)
    fallback.parent.parent.chmod(0o755)
    return fallback


def _wait_http(url: str, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310  (local http only)
                return
        except OSError:
            time.sleep(0.2)
    raise DatamailerError(f"{what} did not answer at {url} within {timeout:.0f}s")
