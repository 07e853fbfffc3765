"""Campaign end to end: N contacts (default 100,000; 1,000,000 with --million), every
one subscribed to the client and verified except a deterministic 2% hard bounced, from
`POST /queue` to the last recipient `sent`, through the real processes: the API, the
scheduler (snapshot and feed), K `datamailer worker campaign-email` processes,
PostgreSQL, moto's server for SQS and `bench.ses_sink` for SES v2 (moto's SES does a few
hundred calls per second; the sink only answers SendEmail and counts).

Figures: emails per second end to end (queue → last `sent_at`) and over the send phase,
the phases (snapshot: queued → `snapshot_completed_at`; enqueue: first → last batch
published; send: first → last `sent_at`), every process's peak RSS and CPU seconds, the
machine's CPU use while the campaign ran, and the sink's call count next to the `sent`
rows (a duplicate send shows as count > sent). The reference, measured first in the same
run: a bare aioboto3 loop in this process sending the same SendEmail request (a real
recipient message of the campaign, built once) to the same sink as fast as it can, with
the workers' client configuration. Targets: >= 2,000 emails/s end to end, a 1,000,000
recipient campaign in < 8 minutes, every worker process < 150 MB.

The machine may be shared: CPU seconds are read per process (and for the bench
database's PostgreSQL backends, sampled from pg_stat_activity with what they wait on), so
"CPU ms per email" and the rate that CPU allows on idle cores hold whatever else runs;
"everything else" is the rest of the machine's busy time (other load shows there).
Diagnostics: --profile-worker (cProfile, CPU clock, of worker 0 into the logs
directory), --pg-statements (server time per statement from the PostgreSQL log),
--log-level INFO (service logs, printed directory).

SES goes to the sink and SQS to moto through botocore's per-service endpoint variables
(AWS_ENDPOINT_URL_SESV2, AWS_ENDPOINT_URL_SQS), which botocore reads when AWS_ENDPOINT_URL
is unset (the clients then get `endpoint_url=None`).

    python -m bench.campaign_e2e [--recipients 100000 | --million] [--workers 2]
        [--concurrency 10] [--profile-worker] [--pg-statements] [--log-level INFO]
"""

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.common import bench_env, fresh_database, peak_rss_mb, prepare_tenant, report, service
from datamailer_core.aws import aws_client, aws_session
from datamailer_core.campaigns.bulk import BulkRecipient, bulk_entry, bulk_request, plan_send
from datamailer_core.campaigns.message import CampaignContent, build_recipient_message
from datamailer_core.mail import build_ses_request
from datamailer_core.security import new_token
from datamailer_core.settings import Settings
from datamailer_server import ops
from datamailer_server.localpg import free_port
from datamailer_workers.deps import SES_CONNECT_TIMEOUT_SECONDS, SES_READ_TIMEOUT_SECONDS

TARGET_EMAILS_PER_SECOND = 2_000
BULK_ENTRIES = 50  # SendBulkEmail's limit, as the workers send
BULK_CONCURRENCY = 10  # a worker's default concurrency
TARGET_MILLION_SECONDS = 8 * 60
TARGET_WORKER_MB = 150
SUPPRESSED_EVERY = 50  # contact i with i % 50 == 0 is hard bounced: 2% skipped
SENDER = {"id": "news", "email": "Bench News <news@bench.example.com>"}
KEY = "bench-e2e"
SUBJECT = "November news for {{ email }}"
HTML = (
    "<html><body><h1>November news</h1>"
    + "<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.</p>" * 8
    + '<p><a href="https://example.com/news/1">Read the first story</a></p>'
    '<p><a href="https://example.com/news/2">Read the second story</a></p>'
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>'
)
TEXT = (
    "November news\n\n"
    + "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\n" * 8
    + "\nRead: https://example.com/news/1\nUnsubscribe: {{ unsubscribe_url }}\n"
)

GENERATE = [
    """
    INSERT INTO contacts (organization_id, email, normalized_email, verified_at, hard_bounced_at)
    SELECT (SELECT organization_id FROM audiences WHERE id = CAST(:audience_id AS bigint)),
           'user' || i || '@example.com', 'user' || i || '@example.com', now(),
           CASE WHEN i % :every = 0 THEN now() END
    FROM generate_series(1, :n) i
    """,
    """
    INSERT INTO subscriptions (contact_id, audience_id, client_id, status, verified_at)
    SELECT id, :audience_id, :client_id, 'subscribed', now() FROM contacts
    """,
]


@contextmanager
def environment(env: dict[str, str]) -> Iterator[Settings]:
    """Settings read from `env` (os.environ swapped for the duration)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield Settings(_env_file=None)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def wait_http(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, its output in `log`; SIGTERM and wait on the way out."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class PgSampler(threading.Thread):
    """Samples the bench database's backends every `interval` seconds while the campaign
    runs: what the active ones wait on (lock waits show as `Lock:...`), how many are idle
    inside a transaction (holding locks while their client is busy), and the CPU seconds
    of every backend seen (backends that come and go between samples are missed)."""

    def __init__(self, url: str, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.dsn = url.replace("+asyncpg", "")
        self.interval = interval
        self.halt = threading.Event()
        self.samples = 0
        self.states: Counter[str] = Counter()
        self.lock_waits: Counter[str] = Counter()
        self.cpu: dict[int, tuple[float, float]] = {}

    def run(self) -> None:
        asyncio.run(self._sample())

    async def _sample(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            while not self.halt.is_set():
                rows = await conn.fetch(
                    "SELECT pid, state, wait_event_type, wait_event, query FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                self.samples += 1
                for row in rows:
                    wait = (
                        f"{row['wait_event_type']}:{row['wait_event']}" if row["wait_event_type"] else "CPU"
                    )
                    self.states[f"{row['state']} / {wait}"] += 1
                    if row["wait_event_type"] == "Lock":
                        self.lock_waits[" ".join(row["query"].split())[:90]] += 1
                    try:
                        used = cpu_seconds(row["pid"])
                    except (OSError, IndexError):
                        continue
                    first = self.cpu.get(row["pid"], (used, used))[0]
                    self.cpu[row["pid"]] = (first, used)
                await asyncio.sleep(self.interval)
        finally:
            await conn.close()

    def stop(self) -> dict[str, Any]:
        self.halt.set()
        self.join(timeout=10)
        per_sample = {k: v / max(1, self.samples) for k, v in self.states.most_common()}
        return {
            "cpu_seconds": sum(last - first for first, last in self.cpu.values()),
            "backends": len(self.cpu),
            "samples": self.samples,
            "backends_by_state_avg": per_sample,
            "lock_waits_by_query_avg": {
                k: v / max(1, self.samples) for k, v in self.lock_waits.most_common(5)
            },
        }


PG_LOG = Path("/var/log/postgresql/postgresql-15-main.log")
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_DURATION = re.compile(r"duration: ([0-9.]+) ms\s+(?:statement|execute [^:]*|bind [^:]*|parse [^:]*):\s*(.*)")


def statement_times(log: Path, offset: int, top: int = 15) -> list[dict[str, Any]]:
    """Server time per statement from the PostgreSQL log past `offset` (only the bench's
    database logs durations: `log_min_duration_statement = 0` is set on it alone)."""
    totals: dict[str, list[float]] = {}
    entries: list[str] = []
    with log.open("rb") as f:
        f.seek(offset)
        for raw in f:
            line = raw.decode(errors="replace")
            if _LOG_LINE.match(line):
                entries.append(line)
            elif entries:
                entries[-1] += line
    for entry in entries:
        found = _DURATION.search(entry.split("\n", 1)[0])
        if found is None:
            continue
        body = (found.group(2) + " " + entry.split("\n", 1)[1] if "\n" in entry else found.group(2)).split()
        key = " ".join(body)[:160]
        totals.setdefault(key, []).append(float(found.group(1)))
    ranked = sorted(totals.items(), key=lambda kv: -sum(kv[1]))[:top]
    return [
        {"statement": k, "calls": len(v), "total_ms": sum(v), "mean_ms": sum(v) / len(v)} for k, v in ranked
    ]


async def log_statements(url: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            name = (await conn.execute(text("SELECT current_database()"))).scalar_one()
            await conn.execute(text(f'ALTER DATABASE "{name}" SET log_min_duration_statement = 0'))
    finally:
        await engine.dispose()


def sample_content() -> CampaignContent:
    return CampaignContent(
        campaign_id=1,
        client_slug="app",
        from_address="news@bench.example.com",
        display_name="Bench News",
        subject=SUBJECT,
        html_body=HTML,
        text_body=TEXT,
        public_base_url="http://localhost:8001",
        secret_key="bench-secret",
    )


def sample_request() -> dict[str, Any]:
    """The SendEmail request of one recipient of the campaign, built by the real code."""
    content = sample_content()
    email = build_recipient_message(
        content, email="user1@example.com", tracking_token=new_token(), unsubscribe_token=new_token()
    )
    return build_ses_request(email, tags={"campaign_id": 1, "client": "app"})


def sample_bulk_request() -> dict[str, Any]:
    """A SendBulkEmail request of 50 recipients of the campaign, built by the real code."""
    content = sample_content()
    template = plan_send(content).template
    assert template is not None, "the bench campaign goes out in bulk"
    entries = [
        bulk_entry(content, template, BulkRecipient(n, f"user{n}@example.com", new_token(), new_token()))
        for n in range(BULK_ENTRIES)
    ]
    shared = bulk_request(content, template, configuration_set=None, tags={"campaign_id": 1, "client": "app"})
    return {**shared, "BulkEmailEntries": entries}


async def bare_sends(
    settings: Settings, calls: int, concurrency: int, *, bulk: bool = False
) -> tuple[float, float]:
    """(emails per second, CPU ms per email in this process) of a bare aioboto3 loop: one
    client configured like the workers', `concurrency` calls in flight, the same request
    every time: SendEmail, or SendBulkEmail of 50 entries (`calls` emails either way)."""
    request = sample_bulk_request() if bulk else sample_request()
    per_call = BULK_ENTRIES if bulk else 1
    config = {"connect_timeout": SES_CONNECT_TIMEOUT_SECONDS, "read_timeout": SES_READ_TIMEOUT_SECONDS}
    async with aws_client(aws_session(settings.aws), settings.aws, "sesv2", **config) as ses:
        send = ses.send_bulk_email if bulk else ses.send_email
        await send(**request)  # connect and warm up
        remaining = calls

        async def loop() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= per_call
                await send(**request)

        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return calls / (time.perf_counter() - start), (time.process_time() - cpu) * 1000 / calls


def settle(processes: dict[str, subprocess.Popen[bytes]], seconds: float = 60) -> None:
    """Wait until every process is idle (imports done, pollers waiting on SQS)."""
    deadline = time.monotonic() + seconds
    before = {name: cpu_seconds(proc.pid) for name, proc in processes.items()}
    while time.monotonic() < deadline:
        time.sleep(0.5)
        for name, proc in processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}")
        now = {name: cpu_seconds(proc.pid) for name, proc in processes.items()}
        if all(now[name] - before[name] < 0.05 for name in now):
            return
        before = now


async def seed(url: str, contacts: int) -> dict[str, int]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            [(audience_id, client_id)] = (
                await conn.execute(
                    text(
                        "SELECT a.id, c.id FROM organizations o JOIN audiences a ON a.organization_id = o.id"
                        " JOIN clients c ON c.organization_id = o.id WHERE o.slug = 'bench'"
                        " AND a.slug = 'news' AND c.slug = 'app'"
                    )
                )
            ).all()
            params = {
                "n": contacts,
                "every": SUPPRESSED_EVERY,
                "audience_id": audience_id,
                "client_id": client_id,
            }
            for statement in GENERATE:
                await conn.execute(text(statement), {k: v for k, v in params.items() if f":{k}" in statement})
            await conn.execute(text("VACUUM ANALYZE"))
    finally:
        await engine.dispose()
    return {"audience_id": audience_id, "client_id": client_id}


async def campaign_figures(url: str) -> dict[str, Any]:
    """Timestamps and counts from the database once the campaign is finished."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            campaign = (
                await conn.execute(
                    text(
                        "SELECT id, status, queued_at, snapshot_completed_at, last_enqueued_at, sent_at,"
                        " batch_count, recipient_count, sent_count, skipped_count, failed_count"
                        " FROM campaigns WHERE external_key = :key"
                    ),
                    {"key": KEY},
                )
            ).one()
            by_status: dict[str, int] = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT status, count(*) FROM campaign_recipients WHERE campaign_id = :id GROUP BY 1"
                        ),
                        {"id": campaign.id},
                    )
                ).all()
            )
            sent = (
                await conn.execute(
                    text(
                        "SELECT min(sent_at) AS first, max(sent_at) AS last,"
                        " count(DISTINCT ses_message_id) AS distinct_ids"
                        " FROM campaign_recipients WHERE campaign_id = :id AND status = 'sent'"
                    ),
                    {"id": campaign.id},
                )
            ).one()
            errors: dict[str, int] = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT coalesce(last_error, skip_reason, '?'), count(*) FROM campaign_recipients"
                            " WHERE campaign_id = :id AND status NOT IN ('sent', 'pending')"
                            " GROUP BY 1 ORDER BY 2 DESC LIMIT 5"
                        ),
                        {"id": campaign.id},
                    )
                ).all()
            )
    finally:
        await engine.dispose()
    return {"campaign": campaign._asdict(), "by_status": by_status, "sent": sent._asdict(), "reasons": errors}


def seconds_between(start: Any, end: Any) -> float | None:
    return (end - start).total_seconds() if start is not None and end is not None else None


def watch(
    base: str, key: str, timeout: float, on_mark: Callable[[str], None] = lambda _: None
) -> dict[str, float]:
    """Queue the campaign and poll it until `sent` (or another finished status); marks in
    seconds after the queue call started, `on_mark(name)` called at each new one."""
    headers = {"Authorization": f"Bearer {key}"}
    marks: dict[str, float] = {}

    def mark(name: str, at: float) -> None:
        if name not in marks:
            marks[name] = at
            on_mark(name)

    start = time.monotonic()
    deadline = start + timeout
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        response = client.post(f"/api/campaigns/{KEY}/queue", json={"audience": "news", "client": "app"})
        response.raise_for_status()
        marks["queue_call"] = time.monotonic() - start
        while time.monotonic() < deadline:
            found = client.get(f"/api/campaigns/{KEY}").json()["campaign"]
            now = time.monotonic() - start
            status = found["status"]
            mark(f"status_{status}", now)
            if found["progress"]["batch_count"] > 0:
                mark("first_batch_seen", now)
            if status in ("sent", "cancelled", "failed"):
                marks["finished"] = now
                return marks
            time.sleep(0.25)
    marks["timed_out"] = timeout
    return marks


def run(
    recipients: int = 100_000,
    workers: int = 2,
    *,
    concurrency: int | None = None,
    bare_calls: int = 20_000,
    bare_concurrency: int = 50,
    profile_worker: bool = False,
    log_level: str = "WARNING",
    pg_statements: bool = False,
    extra_env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix="dm_e2e_logs_"))
    timeout = timeout or max(300.0, recipients / 200)
    python = sys.executable
    with fresh_database() as url, ExitStack() as stack:
        moto_port, sink_port = free_port(), free_port()
        moto = stack.enter_context(
            process(
                [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
                dict(os.environ),
                logs / "moto.log",
            )
        )
        sink = stack.enter_context(
            process(
                [python, "-m", "bench.ses_sink", "--port", str(sink_port)],
                dict(os.environ),
                logs / "sink.log",
            )
        )
        moto_url, sink_url = f"http://127.0.0.1:{moto_port}", f"http://127.0.0.1:{sink_port}"
        wait_http(f"{moto_url}/moto-api/")
        wait_http(f"{sink_url}/count")

        env = {**bench_env(url, SES_MAX_SEND_RATE="1000000", LOG_FORMAT="console"), "LOG_LEVEL": log_level}
        for name in [k for k in env if k.startswith("AWS_ENDPOINT_URL")]:
            del env[name]
        env.update(AWS_ENDPOINT_URL_SQS=moto_url, AWS_ENDPOINT_URL_SESV2=sink_url, PYTHONUNBUFFERED="1")
        if concurrency:
            env["WORKER_CONCURRENCY"] = str(concurrency)
        env.update(extra_env or {})
        key = prepare_tenant(env)
        with environment(env) as settings:
            asyncio.run(ops.set_senders(settings, "app", [SENDER], SENDER["id"], None))
            queue_urls = asyncio.run(ops.create_queues(settings))
            env.update({ops.QUEUE_ENV[name]: queue_url for name, queue_url in queue_urls.items()})
        start = time.perf_counter()
        asyncio.run(seed(url, recipients))
        if pg_statements:
            asyncio.run(log_statements(url))
        seed_seconds = time.perf_counter() - start

        # The bare reference first, against the same sink, before anything else runs.
        with environment(env) as settings:
            bare_rate, bare_cpu_ms = asyncio.run(bare_sends(settings, bare_calls, bare_concurrency))
            bulk_rate, bulk_cpu_ms = asyncio.run(
                bare_sends(settings, bare_calls * 5, BULK_CONCURRENCY, bulk=True)
            )
        httpx.post(f"{sink_url}/reset").raise_for_status()

        api_base, api = stack.enter_context(service("api", env))
        cli = [python, "-m", "datamailer_server.main"]
        scheduler = stack.enter_context(process([*cli, "scheduler"], env, logs / "scheduler.log"))
        worker_procs = []
        for n in range(workers):
            argv = [*cli, "worker", "campaign-email"]
            if profile_worker and n == 0:
                argv = [python, "-m", "bench.campaign_e2e", "--profiled-worker", str(logs / "worker0.prof")]
            worker_procs.append(stack.enter_context(process(argv, env, logs / f"worker{n}.log")))
        processes = {"api": api, "scheduler": scheduler, "sink": sink, "moto (SQS)": moto}
        processes.update({f"worker {n}": proc for n, proc in enumerate(worker_procs)})
        try:
            settle(processes)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; logs in {logs}") from None
        at_rest = {name: rss_mb(proc.pid) for name, proc in processes.items()}

        put = httpx.put(
            f"{api_base}/api/campaigns/{KEY}",
            headers={"Authorization": f"Bearer {key}"},
            json={
                "audience": "news",
                "client": "app",
                "subject": SUBJECT,
                "html_body": HTML,
                "text_body": TEXT,
                "from_email": SENDER["id"],
            },
            timeout=30,
        )
        put.raise_for_status()
        log_offset = PG_LOG.stat().st_size if pg_statements else 0
        cpu_before = {name: cpu_seconds(proc.pid) for name, proc in processes.items()}
        machine_before = machine_cpu()
        cpu_at: dict[str, dict[str, float]] = {}

        def on_mark(name: str) -> None:
            busy, total = machine_cpu()
            cpu_at[name] = {n: cpu_seconds(p.pid) - cpu_before[n] for n, p in processes.items()}
            cpu_at[name]["machine busy (core-seconds)"] = (busy - machine_before[0]) / os.sysconf(
                "SC_CLK_TCK"
            )

        sampler = PgSampler(url)
        sampler.start()
        marks = watch(api_base, key, timeout, on_mark)
        machine_after = machine_cpu()
        pg = sampler.stop()
        cpu = {name: cpu_seconds(proc.pid) - cpu_before[name] for name, proc in processes.items()}
        cpu["PostgreSQL backends of the bench database"] = pg["cpu_seconds"]
        cpu["everything else (this process, other load on the machine)"] = (
            machine_after[0] - machine_before[0]
        ) / os.sysconf("SC_CLK_TCK") - sum(cpu.values())
        rss = {name: peak_rss_mb(proc.pid) for name, proc in processes.items()}
        sink_state = httpx.get(f"{sink_url}/count").json()
        statements = statement_times(PG_LOG, log_offset) if pg_statements else []
        db = asyncio.run(campaign_figures(url))
        # Graceful stops now, so the profile (if any) is written before the logs are read.
        for proc in worker_procs:
            proc.terminate()
        for proc in worker_procs:
            proc.wait(timeout=60)

    campaign, sent = db["campaign"], db["sent"]
    sent_rows = db["by_status"].get("sent", 0)
    snapshot_s = seconds_between(campaign["queued_at"], campaign["snapshot_completed_at"])
    end_to_end_s = seconds_between(campaign["queued_at"], sent["last"])
    send_s = seconds_between(sent["first"], sent["last"])
    enqueue_s = seconds_between(campaign["snapshot_completed_at"], campaign["last_enqueued_at"])
    busy = (machine_after[0] - machine_before[0]) / max(1, machine_after[1] - machine_before[1])
    figures: dict[str, Any] = {
        "recipients": recipients,
        "workers": workers,
        "worker_concurrency": concurrency or 10,
        "seed_seconds": seed_seconds,
        "status": campaign["status"],
        "marks": marks,
        "eligible": recipients - recipients // SUPPRESSED_EVERY,
        "recipient_rows": sum(db["by_status"].values()),
        "by_status": db["by_status"],
        "reasons": db["reasons"],
        "sent_rows": sent_rows,
        "distinct_message_ids": sent["distinct_ids"],
        "sink_count": sink_state["count"],
        "batch_count": campaign["batch_count"],
        "snapshot_seconds": snapshot_s,
        "enqueue_seconds": enqueue_s,
        "send_seconds": send_s,
        "end_to_end_seconds": end_to_end_s,
        "emails_per_second_end_to_end": sent_rows / end_to_end_s if end_to_end_s else None,
        "emails_per_second_send_phase": sent_rows / send_s if send_s else None,
        "bare_emails_per_second": bare_rate,
        "bare_calls": bare_calls,
        "bare_concurrency": bare_concurrency,
        "bare_bulk_emails_per_second": bulk_rate,
        "bare_bulk_cpu_ms_per_email": bulk_cpu_ms,
        "peak_rss_mb": rss,
        "rss_at_rest_mb": at_rest,
        "cpu_seconds": cpu,
        "cpu_seconds_at_marks": cpu_at,
        "machine_cpu_busy": busy,
        "cores": os.cpu_count(),
        "targets": {
            "emails_per_second": TARGET_EMAILS_PER_SECOND,
            "million_seconds": TARGET_MILLION_SECONDS,
            "worker_mb": TARGET_WORKER_MB,
        },
        "logs": str(logs),
        "pg_statements": statements,
        "pg_activity": pg,
        "extra_env": extra_env or {},
    }
    rate = figures["emails_per_second_end_to_end"]
    figures["projected_million_seconds"] = 1_000_000 / rate if rate else None
    # CPU per email of the pipeline's own processes, whatever else loads the machine, and
    # the rate that CPU alone would allow on this many idle cores.
    own = sum(v for k, v in cpu.items() if not k.startswith("everything else"))
    figures["bare_cpu_ms_per_email"] = bare_cpu_ms
    figures["cpu_ms_per_email"] = {k: v * 1000 / max(1, sent_rows) for k, v in cpu.items()}
    figures["pipeline_cpu_ms_per_email"] = own * 1000 / max(1, sent_rows)
    figures["cpu_bound_emails_per_second"] = (
        (os.cpu_count() or 1) * 1000 / figures["pipeline_cpu_ms_per_email"]
    )
    worker_peak = max(v for k, v in rss.items() if k.startswith("worker"))
    rows = [
        ("contacts (2% hard bounced)", f"{recipients:,}"),
        ("workers x concurrency", f"{workers} x {figures['worker_concurrency']}"),
        ("campaign status", str(campaign["status"])),
        ("sent rows / eligible", f"{sent_rows:,} / {figures['eligible']:,}"),
        ("SES sink calls", f"{sink_state['count']:,}"),
        ("distinct SES message ids", f"{sent['distinct_ids']:,}"),
        ("recipients by status", ", ".join(f"{k}={v:,}" for k, v in sorted(db["by_status"].items()))),
        ("batches published", f"{campaign['batch_count']:,}"),
        ("snapshot (queued -> done)", _s(snapshot_s)),
        ("enqueue (snapshot -> last batch)", _s(enqueue_s)),
        ("send (first -> last sent_at)", _s(send_s)),
        ("end to end (queued -> last sent)", _s(end_to_end_s)),
        ("emails/s end to end (target >= 2,000)", _rate(rate)),
        ("emails/s during the send phase", _rate(figures["emails_per_second_send_phase"])),
        (f"emails/s bare SendEmail loop (x{bare_concurrency})", _rate(bare_rate)),
        ("CPU ms per email, bare aioboto3 loop", f"{bare_cpu_ms:.2f}"),
        (f"emails/s bare SendBulkEmail loop (50 per call, x{BULK_CONCURRENCY})", _rate(bulk_rate)),
        ("CPU ms per email, bare SendBulkEmail loop", f"{bulk_cpu_ms:.2f}"),
        ("CPU ms per email, pipeline processes", f"{figures['pipeline_cpu_ms_per_email']:.2f}"),
        *[
            (f"  CPU ms per email {name}", f"{ms:.2f}")
            for name, ms in figures["cpu_ms_per_email"].items()
            if not name.startswith("everything else")
        ],
        (
            f"emails/s its CPU allows on {os.cpu_count()} idle cores",
            _rate(figures["cpu_bound_emails_per_second"]),
        ),
        ("1,000,000 projected (target < 480 s)", _s(figures["projected_million_seconds"])),
        (f"worker peak RSS, max (target < {TARGET_WORKER_MB} MB)", f"{worker_peak:.0f} MB"),
        *[
            (f"  peak RSS {name} (at rest)", f"{mb:.0f} MB ({at_rest[name]:.0f} MB)")
            for name, mb in rss.items()
        ],
        *[(f"  CPU s {name}", f"{value:.1f}") for name, value in figures["cpu_seconds"].items()],
        (f"machine CPU busy ({os.cpu_count()} cores)", f"{busy:.0%}"),
        *[
            (f"  PG backends {state}", f"{avg:.1f} on average")
            for state, avg in list(pg["backends_by_state_avg"].items())[:6]
        ],
        *[
            (f"  PG lock wait {n + 1}", f"{avg:.1f} on average: {query}")
            for n, (query, avg) in enumerate(pg["lock_waits_by_query_avg"].items())
        ],
        ("process logs", str(logs)),
        *[
            (f"  PG {st['total_ms'] / 1000:6.1f} s {st['calls']:6} x", st["statement"][:100])
            for st in statements
        ],
    ]
    name = "campaign_e2e" if recipients == 100_000 else f"campaign_e2e_{recipients}"
    if extra_env:
        rows.insert(2, ("extra settings", " ".join(f"{k}={v}" for k, v in extra_env.items())))
    report(name + ("_whatif" if extra_env else ""), rows, figures)
    return figures


def profiled_worker(path: str) -> None:
    """`datamailer worker campaign-email` under cProfile with a CPU clock. `to_thread` runs
    inline here, so the rendering done in a thread elsewhere shows in the same profile (and
    GIL waits do not pass for work)."""
    import cProfile

    from datamailer_server.main import app

    async def inline(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    asyncio.to_thread = inline
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    try:
        app(["worker", "campaign-email"], standalone_mode=False)
    finally:
        profiler.disable()
        profiler.dump_stats(path)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--million", action="store_true", help="1,000,000 recipients")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=None, help="WORKER_CONCURRENCY")
    parser.add_argument("--bare-calls", type=int, default=20_000)
    parser.add_argument("--profile-worker", action="store_true", help="cProfile worker 0 (logs dir)")
    parser.add_argument("--log-level", default="WARNING", help="LOG_LEVEL of the services")
    parser.add_argument("--pg-statements", action="store_true", help="log and rank server statement times")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra setting for every service"
    )
    parser.add_argument("--profiled-worker", metavar="PATH", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.profiled_worker:
        profiled_worker(arguments.profiled_worker)
        sys.exit(0)
    run(
        1_000_000 if arguments.million else arguments.recipients,
        arguments.workers,
        concurrency=arguments.concurrency,
        bare_calls=arguments.bare_calls,
        profile_worker=arguments.profile_worker,
        log_level=arguments.log_level,
        pg_statements=arguments.pg_statements,
        extra_env=dict(item.split("=", 1) for item in arguments.env),
    )
