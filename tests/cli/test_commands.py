"""The operator commands, run as an operator runs them: a process with environment settings."""

import email.message
import json
import os
import subprocess
import sys
from collections.abc import Callable

import boto3
import pytest


class Cli:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "datamailer_server.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if ok:
            assert result.returncode == 0, result.stderr
        return result


@pytest.fixture
def cli(make_database: Callable[[], str], aws_endpoint: str) -> Cli:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "AWS_", "SQS_"))}
    env.update(
        DATABASE_URL=make_database(),
        AWS_ENDPOINT_URL=aws_endpoint,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_REGION="us-east-1",
        SECRET_KEY="cli-test-secret",
        DATAMAILER_ENV="test",
    )
    return Cli(env)


def test_queues_create_makes_four_queues_with_dlq_redrive_and_is_idempotent(
    cli: Cli, aws_endpoint: str
) -> None:
    first = cli("queues", "create").stdout.splitlines()
    second = cli("queues", "create").stdout.splitlines()
    assert first == second
    assert [line.split("=")[0] for line in first] == [
        "SQS_TRANSACTIONAL_EMAIL_QUEUE_URL",
        "SQS_CAMPAIGN_EMAIL_QUEUE_URL",
        "SQS_SES_WEBHOOKS_QUEUE_URL",
        "SQS_EMAIL_EVENTS_QUEUE_URL",
    ]
    sqs = boto3.client(
        "sqs",
        endpoint_url=aws_endpoint,
        region_name="us-east-1",
        aws_access_key_id="t",
        aws_secret_access_key="t",
    )
    names = sorted(url.rsplit("/", 1)[1] for url in sqs.list_queues()["QueueUrls"])
    assert names == sorted(
        [
            q
            for base in ("campaign-email", "email-events", "ses-webhooks", "transactional-email")
            for q in (base, base + "-dlq")
        ]
    )
    url = first[0].split("=", 1)[1]
    redrive = json.loads(
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"][
            "RedrivePolicy"
        ]
    )
    assert redrive["deadLetterTargetArn"].endswith(":transactional-email-dlq")
    assert int(redrive["maxReceiveCount"]) == 5


def test_provision_senders_and_keys_lifecycle(cli: Cli) -> None:
    args = ("provision", "--organization", "acme", "--audience", "news", "--client", "web")
    assert cli(*args).stdout == cli(*args).stdout  # idempotent

    out = cli(
        "senders",
        "set",
        "web",
        "--sender",
        "support=Acme Support <support@acme.com>",
        "--default",
        "support",
    )
    assert out.stdout.strip() == (
        "support: Acme Support <support@acme.com> (default)"
        "  [NOT verified in SES (not_found): SES refuses mail from it]"
    )
    boto3.client(
        "sesv2",
        endpoint_url=cli.env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="t",
        aws_secret_access_key="t",
    ).create_email_identity(EmailIdentity="acme.com")
    verified = cli("senders", "set", "web", "--sender", "support=Acme Support <support@acme.com>")
    assert (
        verified.stdout.strip()
        == "support: Acme Support <support@acme.com> (default)  [verified in SES (acme.com)]"
    )
    bad = cli("senders", "set", "web", "--sender", "x=Evil\r\nBcc: a@b.c <x@acme.com>", ok=False)
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1
    assert "senders.0.email: invalid" in bad.stderr

    raw = cli("keys", "create", "web", "--name", "production").stdout.strip()
    assert raw.startswith("dm_")
    dup = cli("keys", "create", "web", "--name", "production", ok=False)
    assert dup.returncode == 1
    assert "already has an active key named" in dup.stderr

    listing = cli("keys", "list", "web").stdout
    public = "_".join(raw.split("_", 2)[:2])
    assert public in listing
    assert raw not in listing
    assert "name=production" in listing

    cli("keys", "revoke", public)
    cli("keys", "revoke", public)  # twice is fine
    assert "revoked_at=-" not in cli("keys", "list", "web").stdout
    assert cli("keys", "create", "web", "--name", "production").stdout.startswith("dm_")


def test_commands_fail_with_one_line_when_the_database_is_unreachable(cli: Cli) -> None:
    cli.env["DATABASE_URL"] = "postgresql+asyncpg://postgres@127.0.0.1:9/none"
    result = cli("keys", "list", ok=False)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: ")


def test_settings_refuse_the_default_secret_outside_local_mode(cli: Cli) -> None:
    cli.env.pop("SECRET_KEY")
    cli.env["DATAMAILER_ENV"] = "production"
    result = cli("keys", "list", ok=False)
    assert result.returncode == 1
    assert "SECRET_KEY must be set outside local mode" in result.stderr


def test_server_package_names_leave_room_for_the_datamailer_client() -> None:
    """Datamailer's own client installs as `datamailer` / `datamailer_cli`; ours must not clash."""
    import importlib.metadata
    import importlib.util

    assert importlib.metadata.distribution("datamailer-server").entry_points.select(name="datamailer")
    for taken in ("datamailer", "datamailer-cli"):
        with pytest.raises(importlib.metadata.PackageNotFoundError):
            importlib.metadata.distribution(taken)
    assert importlib.util.find_spec("datamailer_cli") is None


def test_dev_inbox_prints_what_the_local_ses_received_decoded(cli: Cli) -> None:
    sesv2 = boto3.client(
        "sesv2",
        endpoint_url=cli.env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="t",
        aws_secret_access_key="t",
    )
    sesv2.create_email_identity(EmailIdentity="news@inbox.example.com")
    message = email.message.EmailMessage()
    message["From"] = "News <news@inbox.example.com>"
    message["To"] = "ada@example.com"
    message["Subject"] = "Inbox check ✓"
    message.set_content("Hello Ada, ünïcode survives.", cte="base64")
    message.add_alternative("<p>Hello Ada</p>", subtype="html")
    sesv2.send_email(Content={"Raw": {"Data": message.as_bytes()}})

    out = cli("dev", "inbox", "--limit", "1").stdout

    assert "From: News <news@inbox.example.com>" in out
    assert "To: ada@example.com" in out
    assert "Subject: Inbox check ✓" in out
    assert "Hello Ada, ünïcode survives." in out
    assert out.count("From:") == 1

    # The simple form, as the transactional and per-recipient campaign sends use it.
    sesv2.send_email(
        FromEmailAddress="news@inbox.example.com",
        Destination={"ToAddresses": ["bob@example.com"]},
        Content={"Simple": {"Subject": {"Data": "Simple one"}, "Body": {"Html": {"Data": "<p>Hi Bob</p>"}}}},
    )
    out = cli("dev", "inbox", "--limit", "0").stdout
    assert out.count("From:") == 2
    assert "To: bob@example.com" in out
    assert "Subject: Simple one" in out
    assert "<p>Hi Bob</p>" in out


def test_dev_inbox_without_a_local_endpoint_is_one_line_error(cli: Cli) -> None:
    cli.env = {k: v for k, v in cli.env.items() if k != "AWS_ENDPOINT_URL"}
    result = cli("dev", "inbox", ok=False)
    assert result.returncode == 1
    assert "AWS_ENDPOINT_URL is not set" in result.stderr
