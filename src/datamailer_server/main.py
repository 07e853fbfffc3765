"""`datamailer`: the operator command (spec/runtime.md). Every command has --help, exits
non-zero with a one-line reason on failure, and is safe to run twice."""

import asyncio
import functools
import os
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError

from datamailer_core.errors import DatamailerError
from datamailer_core.logging import configure_logging
from datamailer_core.metrics import Metrics
from datamailer_core.repositories.contacts import MANUAL_SUPPRESSIONS
from datamailer_core.settings import Settings
from datamailer_server import campaigns as campaign_ops
from datamailer_server import dlq, inbox, infra, ops
from datamailer_workers import poller, scheduler
from datamailer_workers.monitor import DEFAULT_MONITOR_HOST

app = typer.Typer(help="Datamailer: self-hosted email on Amazon SES.", no_args_is_help=True)

MetricsPort = Annotated[
    int | None,
    typer.Option(min=0, max=65535, help="Serve /metrics (Prometheus) and /health on this port."),
]
MetricsHost = Annotated[str, typer.Option(help="Address the metrics port listens on.")]
queues_app = typer.Typer(help="SQS queues.", no_args_is_help=True)
senders_app = typer.Typer(help="Sender identities.", no_args_is_help=True)
keys_app = typer.Typer(help="Client API keys.", no_args_is_help=True)
app.add_typer(queues_app, name="queues")
app.add_typer(senders_app, name="senders")
app.add_typer(keys_app, name="keys")
campaigns_app = typer.Typer(help="Campaign procedures of the runbook.", no_args_is_help=True)
app.add_typer(campaigns_app, name="campaigns")
contacts_app = typer.Typer(help="Contact procedures.", no_args_is_help=True)
app.add_typer(contacts_app, name="contacts")
webhooks_app = typer.Typer(help="Outbound webhook endpoints.", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")
dlq_app = typer.Typer(help="Dead-letter queues.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
transactional_app = typer.Typer(help="Transactional message procedures.", no_args_is_help=True)
app.add_typer(transactional_app, name="transactional")
infra_app = typer.Typer(help="The AWS deployment (CloudFormation), checked locally.", no_args_is_help=True)
app.add_typer(infra_app, name="infra")
dev_app = typer.Typer(help="Local development helpers (against `datamailer up`).", no_args_is_help=True)
app.add_typer(dev_app, name="dev")

T = TypeVar("T")


def fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(1)


def settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise fail(f"configuration: {first['msg']}") from None


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run an operation; known failures become one line on stderr and exit 1."""
    try:
        return asyncio.run(coro)
    except DatamailerError as exc:
        detail = ", ".join(f"{k}: {v}" for k, v in exc.fields.items())
        raise fail(exc.message + (f" ({detail})" if detail else "")) from None
    except OSError as exc:
        raise fail(str(exc)) from None


def one_line_errors(func: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            func(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # an operator sees one line, not a traceback
            raise fail(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None

    return wrapper


@app.command()
@one_line_errors
def migrate(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply database migrations (alembic upgrade head) to DATABASE_URL."""
    ops.migrate(settings(), revision)
    typer.echo(f"database migrated to {revision}")


def _serve(target: str, host: str, port: int, workers: int) -> None:
    import uvicorn  # here, not at the top: a worker process never pays for it

    cfg = settings()
    uvicorn.run(
        target,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=cfg.log.level.lower(),
        access_log=False,
        proxy_headers=True,
    )


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
) -> None:
    """Serve the client API."""
    _serve("datamailer_api.main:create_app", host, port, workers)


@app.command()
def tracking(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8001,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
) -> None:
    """Serve the public tracking, unsubscribe and webhook routes."""
    _serve("datamailer_tracking.main:create_app", host, port, workers)


@queues_app.command("create")
@one_line_errors
def queues_create() -> None:
    """Create the four queues and their DLQs with redrive (idempotent)."""
    urls = run(ops.create_queues(settings()))
    for name, url in urls.items():
        typer.echo(f"{ops.QUEUE_ENV[name]}={url}")


@app.command()
@one_line_errors
def provision(
    organization: Annotated[str, typer.Option(help="Organization slug.")],
    audience: Annotated[str, typer.Option(help="Audience slug.")],
    client: Annotated[str, typer.Option(help="Client slug.")],
) -> None:
    """Create an organization, audience and client when missing (idempotent)."""
    scope = run(ops.provision(settings(), organization, audience, client))
    typer.echo(
        f"organization={scope.organization.slug} audience={scope.audience.slug} client={scope.client.slug}"
    )


def _parse_sender(value: str) -> dict[str, str]:
    sid, sep, email = value.partition("=")
    if not sep:
        raise typer.BadParameter("expected id=Name <address>", param_hint="--sender")
    return {"id": sid.strip(), "email": email.strip()}


@senders_app.command("set")
@one_line_errors
def senders_set(
    client: Annotated[str, typer.Argument(help="Client slug.")],
    sender: Annotated[list[str], typer.Option(help="id=Name <address>; repeat for several.")],
    default: Annotated[str | None, typer.Option(help="Default sender id.")] = None,
    organization: Annotated[str | None, typer.Option(help="Organization slug.")] = None,
) -> None:
    """Replace a client's sender identities."""
    cleaned, default_id = run(
        ops.set_senders(settings(), client, [_parse_sender(s) for s in sender], default, organization)
    )
    checks = run(ops.check_sender_identities(settings(), cleaned))
    for s, check in zip(cleaned, checks, strict=True):
        mark = " (default)" if s["id"] == default_id else ""
        if check.verified:
            state = f"verified in SES ({check.identity})"
        elif check.verified is None:
            state = f"SES not asked ({check.status})"
        else:
            state = f"NOT verified in SES ({check.status}): SES refuses mail from it"
        typer.echo(f"{s['id']}: {s['email']}{mark}  [{state}]")


@keys_app.command("create")
@one_line_errors
def keys_create(
    client: Annotated[str, typer.Argument(help="Client slug.")],
    name: Annotated[str, typer.Option(help="Key name, unique among the client's active keys.")],
    organization: Annotated[str | None, typer.Option(help="Organization slug.")] = None,
    notes: Annotated[str | None, typer.Option(help="Free-form notes.")] = None,
) -> None:
    """Create an API key; the raw key is printed once and never stored."""
    issued = run(ops.create_key(settings(), client, name, organization, notes))
    typer.echo(issued.raw)


@keys_app.command("list")
@one_line_errors
def keys_list(client: Annotated[str | None, typer.Argument(help="Client slug.")] = None) -> None:
    """List API keys (public ids only)."""
    rows = run(ops.list_keys(settings(), client))
    for row in rows:
        typer.echo("  ".join(f"{k}={v}" for k, v in row.items()))
    if not rows:
        typer.echo("no keys")


@keys_app.command("revoke")
@one_line_errors
def keys_revoke(
    public_id: Annotated[str, typer.Argument(help="dm_<public_id> as `keys list` shows.")],
) -> None:
    """Revoke an API key (idempotent)."""
    run(ops.revoke_key(settings(), public_id))
    typer.echo(f"revoked {public_id}")


@contacts_app.command("erase")
@one_line_errors
def contacts_erase(
    email: Annotated[str, typer.Argument(help="The address to erase.")],
    organization: Annotated[
        str | None, typer.Option(help="Only in this organization (default: every organization).")
    ] = None,
) -> None:
    """Erase an address: live state deleted, history anonymized, suppression kept as a hash."""
    erased = run(ops.erase_address(settings(), email, organization))
    typer.echo(f"erased in {len(erased)} organizations" + (f": {', '.join(erased)}" if erased else ""))


@contacts_app.command("suppress")
@one_line_errors
def contacts_suppress(
    email: Annotated[str, typer.Argument(help="The address to suppress.")],
    reason: Annotated[
        str,
        typer.Option(
            help=f"{' | '.join(MANUAL_SUPPRESSIONS)}: the first two block all mail, the last marketing."
        ),
    ],
    organization: Annotated[
        str | None, typer.Option(help="Only in this organization (default: every organization).")
    ] = None,
) -> None:
    """Suppress an address by hand; contacts created for it later start suppressed too."""
    normalized, changed = run(ops.suppress(settings(), email, reason, organization))
    where = f"organization {organization}" if organization else "every organization"
    typer.echo(
        f"suppressed {normalized} ({reason}) in {where}: "
        + (
            f"{len(changed)} contacts changed"
            if changed
            else "no contact changed (already suppressed or none yet)"
        )
    )


@dlq_app.command("inspect")
@one_line_errors
def dlq_inspect(
    queue: Annotated[str, typer.Argument(help="The source queue, e.g. transactional-email.")],
    limit: Annotated[int, typer.Option(min=1, help="At most this many messages.")] = 10,
) -> None:
    """Sample a queue's DLQ without removing anything: id, receive count, contract, body."""
    try:
        dlq.check_queue(queue)
    except DatamailerError as exc:
        raise fail(exc.message) from None
    found = run(dlq.inspect(settings(), queue, limit))
    typer.echo(f"{found.dlq}: about {found.depth} messages")
    for m in found.messages:
        typer.echo(f"{m.message_id}  receives={m.receive_count}  {m.contract} v{m.version}  {m.preview}")


@dlq_app.command("replay")
@one_line_errors
def dlq_replay(
    queue: Annotated[str, typer.Argument(help="The source queue, e.g. transactional-email.")],
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many (default: all).")] = None,
) -> None:
    """Move DLQ messages back to the source queue (send first, then delete: never lost).

    Fix the cause first; the handlers are idempotent, so a replayed duplicate is safe."""
    try:
        dlq.check_queue(queue)
    except DatamailerError as exc:
        raise fail(exc.message) from None

    def progress(count: int) -> None:
        typer.echo(f"replayed {count}", err=True)

    count = run(dlq.replay(settings(), queue, limit, progress=progress, metrics=Metrics()))
    typer.echo(
        f"replayed {count} messages into {queue}" if count else f"the {queue} DLQ is empty: nothing replayed"
    )


@transactional_app.command("requeue-stale")
@one_line_errors
def transactional_requeue_stale(
    older_than: Annotated[
        float | None,
        typer.Option(min=1, help="Seconds `queued` (default: TRANSACTIONAL_REQUEUE_AFTER_SECONDS)."),
    ] = None,
) -> None:
    """Publish again the transactional messages stuck `queued`, as the scheduler does."""
    count = run(ops.requeue_stale_transactional(settings(), older_than))
    typer.echo(f"re-enqueued {count} transactional messages")


def _report_webhooks(changes: list[tuple[str, bool]], done: str) -> None:
    for url, changed in changes:
        typer.echo(f"{url}: {done}" + ("" if changed else " (already)"))


@webhooks_app.command("enable")
@one_line_errors
def webhooks_enable(
    client: Annotated[str, typer.Argument(help="Client slug.")],
    url: Annotated[
        str | None, typer.Option(help="Only this endpoint (default: all of the client's).")
    ] = None,
    organization: Annotated[str | None, typer.Option(help="Organization slug.")] = None,
) -> None:
    """Re-enable endpoints (e.g. disabled after consecutive failures); failures reset."""
    _report_webhooks(run(ops.set_webhooks_enabled(settings(), client, True, url, organization)), "enabled")


@webhooks_app.command("disable")
@one_line_errors
def webhooks_disable(
    client: Annotated[str, typer.Argument(help="Client slug.")],
    url: Annotated[
        str | None, typer.Option(help="Only this endpoint (default: all of the client's).")
    ] = None,
    organization: Annotated[str | None, typer.Option(help="Organization slug.")] = None,
) -> None:
    """Stop delivering to endpoints until they are enabled again."""
    _report_webhooks(run(ops.set_webhooks_enabled(settings(), client, False, url, organization)), "disabled")


@app.command()
@one_line_errors
def worker(
    queue: Annotated[str, typer.Argument(help="A queue name (e.g. transactional-email), or all.")],
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Records in progress per queue (WORKER_CONCURRENCY).")
    ] = None,
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = DEFAULT_MONITOR_HOST,
) -> None:
    """Poll SQS and run the handlers until SIGTERM/SIGINT (in-flight records finish)."""
    try:
        queues = poller.resolve_queues(queue)
    except ValueError as exc:
        raise fail(str(exc)) from None
    cfg = settings()
    configure_logging(cfg.log)
    run(
        poller.run_workers(
            cfg, queues, concurrency=concurrency, metrics_port=metrics_port, metrics_host=metrics_host
        )
    )


@app.command("scheduler")
@one_line_errors
def scheduler_command(
    once: Annotated[bool, typer.Option("--once", help="Run every job once, then exit.")] = False,
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = DEFAULT_MONITOR_HOST,
) -> None:
    """Re-enqueue lost messages, expire stale leases, dispatch webhooks; every SCHEDULER_INTERVAL_SECONDS."""
    cfg = settings()
    configure_logging(cfg.log)
    results = run(scheduler.run(cfg, once=once, metrics_port=metrics_port, metrics_host=metrics_host))
    for name, count in (results or {}).items():
        typer.echo(f"{name}: {count}")


@app.command()
def up(
    data_dir: Annotated[Path, typer.Option(help="Where local data lives.", envvar="DATAMAILER_HOME")] = Path(
        ".datamailer"
    ),
    api_port: Annotated[int, typer.Option(help="API port.")] = 8000,
    tracking_port: Annotated[int, typer.Option(help="Tracking port.")] = 8001,
    pg_port: Annotated[int, typer.Option(help="Embedded PostgreSQL port.")] = 5433,
    aws_port: Annotated[int, typer.Option(help="Local AWS endpoint (moto) port.")] = 4566,
) -> None:
    """Start the whole system on embedded defaults until Ctrl-C."""
    from datamailer_server.up import LocalStack  # moto and the launchers: only `up` needs them

    stack = LocalStack(
        data_dir=data_dir.resolve(),
        api_port=api_port,
        tracking_port=tracking_port,
        pg_port=pg_port,
        aws_port=aws_port,
    )
    try:
        code = stack.run()
    except DatamailerError as exc:
        raise fail(exc.message) from None
    raise typer.Exit(code)


CampaignIdArg = Annotated[
    int | None, typer.Argument(help="Campaign id (or name it with --client and --key).")
]
ClientOpt = Annotated[str | None, typer.Option("--client", help="Client slug.")]
KeyOpt = Annotated[str | None, typer.Option("--key", help="The campaign's external key.")]
OrganizationOpt = Annotated[str | None, typer.Option("--organization", help="Organization slug.")]


def _campaign(
    campaign_id: int | None, client: str | None, key: str | None, organization: str | None
) -> campaign_ops.CampaignRef:
    try:
        return campaign_ops.CampaignRef(campaign_id, client, key, organization)
    except DatamailerError as exc:
        raise fail(exc.message) from None


def _echo_campaign(info: dict[str, Any]) -> None:
    reason = f" ({info['paused_reason']})" if info.get("paused_reason") else ""
    typer.echo(f"campaign {info['id']} {info['client']}/{info['key']}: {info['status']}{reason}")
    typer.echo(f"  snapshot: {info['snapshot']}  batches enqueued: {info['batches']}")
    typer.echo("  recipients: " + (" ".join(f"{k}={v}" for k, v in info["recipients"].items()) or "none yet"))
    typer.echo("  counters: " + " ".join(f"{k}={v}" for k, v in info["counters"].items()))


@campaigns_app.command("pause")
@one_line_errors
def campaigns_pause(
    campaign_id: CampaignIdArg = None,
    client: ClientOpt = None,
    key: KeyOpt = None,
    organization: OrganizationOpt = None,
) -> None:
    """Stop feeding the queue at once (a paused campaign stays paused)."""
    found = run(campaign_ops.pause(settings(), _campaign(campaign_id, client, key, organization)))
    typer.echo(f"campaign {found.id}: {found.status}")


@campaigns_app.command("resume")
@one_line_errors
def campaigns_resume(
    campaign_id: CampaignIdArg = None,
    client: ClientOpt = None,
    key: KeyOpt = None,
    organization: OrganizationOpt = None,
) -> None:
    """Continue a paused campaign; only recipients still pending are enqueued again."""
    found = run(campaign_ops.resume(settings(), _campaign(campaign_id, client, key, organization)))
    typer.echo(f"campaign {found.id}: {found.status}")


@campaigns_app.command("status")
@one_line_errors
def campaigns_status(
    campaign_id: CampaignIdArg = None,
    client: ClientOpt = None,
    key: KeyOpt = None,
    organization: OrganizationOpt = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until the campaign is finished.")] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes with --watch.")] = 2.0,
) -> None:
    """Status, snapshot and enqueue progress, recipients by status, counters."""
    ref = _campaign(campaign_id, client, key, organization)
    while True:
        info = run(campaign_ops.status(settings(), ref))
        _echo_campaign(info)
        if not watch or info["status"] in campaign_ops.FINISHED_STATUSES:
            return
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return


@campaigns_app.command("recompute-stats")
@one_line_errors
def campaigns_recompute_stats(
    campaign_id: CampaignIdArg = None,
    client: ClientOpt = None,
    key: KeyOpt = None,
    organization: OrganizationOpt = None,
) -> None:
    """Recompute every counter from the recipient and event rows (safe at any time)."""
    counters = run(campaign_ops.recompute(settings(), _campaign(campaign_id, client, key, organization)))
    typer.echo(" ".join(f"{k}={v}" for k, v in counters.items()))


@campaigns_app.command("retry-failed")
@one_line_errors
def campaigns_retry_failed(
    campaign_id: CampaignIdArg = None,
    client: ClientOpt = None,
    key: KeyOpt = None,
    organization: OrganizationOpt = None,
) -> None:
    """Put failed recipients back to pending for the scheduler to enqueue again.

    Sent recipients never are. The runbook: pause, fix the cause, retry-failed, resume."""
    found, reset = run(
        campaign_ops.retry_failed(settings(), _campaign(campaign_id, client, key, organization))
    )
    typer.echo(f"campaign {found.id}: {reset} failed recipients back to pending; status {found.status}")


@infra_app.command("validate")
@one_line_errors
def infra_validate(
    template: Annotated[
        Path, typer.Option(help="The CloudFormation template (YAML or JSON).")
    ] = infra.DEFAULT_TEMPLATE,
    parameters: Annotated[
        list[Path] | None,
        typer.Option(
            help="A parameter file; repeat for several (default: the staging and production examples)."
        ),
    ] = None,
) -> None:
    """Check the template's structure and its parameter files (no AWS calls)."""
    try:
        report = infra.validate(template, parameters if parameters is not None else infra.DEFAULT_PARAMETERS)
    except infra.InfraError as exc:
        raise fail(str(exc)) from None
    if not report.ok:
        for problem in report.problems:
            typer.secho(f"error: {problem}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    for line in report.lines:
        typer.echo(f"ok {line}")


@dev_app.command("inbox")
@one_line_errors
def dev_inbox(
    limit: Annotated[int, typer.Option(min=0, help="Show the last N messages (0: all).")] = 5,
) -> None:
    """The last messages the local SES (moto's server at AWS_ENDPOINT_URL) received: From,
    To, Subject and the text body, decoded."""
    endpoint = settings().aws.endpoint_url
    if not endpoint:
        raise fail("AWS_ENDPOINT_URL is not set: the inbox is moto's (`datamailer up`), not real SES")
    typer.echo(inbox.render(inbox.fetch_sent(endpoint), limit))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(app())
