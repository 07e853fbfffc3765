"""Schemathesis over the API's OpenAPI document (`make fuzz`; slow, never part of `make test`).

The stack is real and started here: a fresh migrated database (the test suite's fixtures:
DATABASE_URL, else 127.0.0.1:5432, else an ephemeral cluster), moto's server for SQS and
SES with the four queues, a provisioned organization/audience/client with a sender, a
contact, a template and a campaign, and `datamailer api` as its own uvicorn process.
`st run` then fuzzes every operation with all checks, a fixed seed, a bounded number of
examples per operation and a time budget, the key in the Authorization header; most
generated `client`/`audience` values (and some ids, keys and emails) are replaced with the
provisioned ones so that requests get past the scope checks into the handlers.

Schemathesis prints its summary; the test fails when it reports any failure (a 5xx, a
response that breaks the schema, a documented status or content type not honoured...).

Valid requests the API rightly refuses: schemathesis' `positive_data_acceptance` is replaced
by `fuzz/hooks.py`'s `positive_data_accepted`, which also accepts a 400 whose envelope names
only rejections a schema cannot express: an audience that does not exist in the key's
organization (api.md: `audience: not_found`), conditional requirements (`category_tag` needs
`audience` and `client`; `html_body` or `text_body`), opaque cursors, tag names that slugify
to nothing, mailboxes with a display name, items unique by one property, references to the
client's sender ids, and webhook URL rules. 404 (an unknown id or key) and 409 (a draft
campaign's pause, a verified subscription) count as accepted, as schemathesis' defaults do,
and 413 (the 1 MiB body cap, which JSON Schema cannot say). Each of these bodies must still
be the documented envelope (`response_schema_conformance`), and any 5xx fails
(`not_a_server_error`).
Knobs: FUZZ_MAX_EXAMPLES (default 30 per operation), FUZZ_MAX_TIME (seconds, default 360),
FUZZ_SEED (default 15), FUZZ_WORKERS (default 1).
"""

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from bench.common import bench_env, service
from datamailer_server import ops
from tests.conftest import settings_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent

ORGANIZATION, AUDIENCE, CLIENT = "fuzz-org", "fuzz-news", "fuzz-app"
SENDER = {"id": "news", "email": "Fuzz News <news@fuzz.example.com>"}
EMAIL = "alice@fuzz.example.com"
TEMPLATE, CAMPAIGN = "welcome", "fuzz-campaign"
SEED = int(os.environ.get("FUZZ_SEED", "15"))
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "30"))
MAX_TIME = int(os.environ.get("FUZZ_MAX_TIME", "360"))
# One worker: two threads can trip CPython 3.11's ast.parse (hypothesis describing a filter
# lambda: "AST constructor recursion depth mismatch", a schemathesis runtime error).
WORKERS = int(os.environ.get("FUZZ_WORKERS", "1"))
HARD_TIMEOUT = MAX_TIME + 180  # schema loading, the summary, shrinking the last failures
# Schemathesis 4's defaults for the negative check, plus 413 (see config_toml); the
# positive one is fuzz/hooks.py's.
NEGATIVE_STATUSES = [
    "400",
    "401",
    "403",
    "404",
    "405",
    "406",
    "409",
    "413",
    "415",
    "422",
    "428",
    "429",
    "5xx",
]


def config_toml(values: dict[str, str | int]) -> str:
    """schemathesis.toml: checks, headers, and dictionaries of valid values bound to the
    parameters that carry them (each used with the given probability, the rest generated)."""
    bindings = {
        "query.client": ("client", 0.9),
        "body.client": ("client", 0.9),
        "query.audience": ("audience", 0.9),
        "body.audience": ("audience", 0.9),
        "path.contact_id": ("contact", 0.7),
        "path.key": ("template", 0.5),
        "body.template_key": ("template", 0.5),
        "path.external_key": ("campaign", 0.5),
        "query.email": ("email", 0.5),
        "body.email": ("email", 0.5),
    }
    authorization = json.dumps(f"Bearer {values['key']}")
    lines = [
        f"headers = {{ Authorization = {authorization} }}",
        "request-timeout = 30.0",
        "[checks]",
        "enabled = true",
        # The machine is shared (2 cores, the fuzzer, the API, PostgreSQL, moto): the default
        # 10 s response time budget measures the load, not the API; the request timeout stays.
        "max_response_time = 30.0",
        # 413 is documented on every operation with a body: the 1 MiB cap is no JSON Schema
        # keyword, so a body over it is rightly refused whether or not it fits the schema.
        "[checks.negative_data_rejection]",
        f"expected-statuses = {json.dumps(NEGATIVE_STATUSES)}",
        "[dictionaries]",
        *(
            f"{name} = {{ values = [{json.dumps(values[name])}] }}"
            for name in sorted({n for n, _ in bindings.values()})
        ),
        "[parameters]",
        *(f'"{key}" = {{ dictionary = "{name}", probability = {p} }}' for key, (name, p) in bindings.items()),
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def stack(make_database: Callable[[], str], moto_endpoint: str) -> Iterator[tuple[str, dict[str, str | int]]]:
    """(API base URL, dictionary values) of a running, provisioned stack."""
    database_url = make_database()
    settings = settings_for(database_url, moto_endpoint)
    queues = asyncio.run(ops.create_queues(settings))
    queue_env = {ops.QUEUE_ENV[name]: url for name, url in queues.items()}
    settings = settings_for(database_url, moto_endpoint, **queue_env)
    asyncio.run(ops.provision(settings, ORGANIZATION, AUDIENCE, CLIENT))
    asyncio.run(ops.set_senders(settings, CLIENT, [SENDER], SENDER["id"], None))
    asyncio.run(ops.verify_sender_identities(settings, ["news@fuzz.example.com"]))
    key = asyncio.run(ops.create_key(settings, CLIENT, "fuzz")).raw
    env = {
        **bench_env(database_url, **queue_env),
        "AWS_ENDPOINT_URL": moto_endpoint,
        "SECRET_KEY": "test-secret-key",
    }
    with service("api", env) as (base, proc):
        assert proc.poll() is None, "the API process did not start"
        headers = {"Authorization": f"Bearer {key}"}
        scope = {"audience": AUDIENCE, "client": CLIENT}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            contact = http.post("/api/contacts", json={"email": EMAIL, "status": "subscribed", **scope})
            assert contact.status_code == 200, contact.text
            template = http.put(
                f"/api/transactional/templates/{TEMPLATE}",
                json={"client": CLIENT, "subject": "Hi {{ name }}", "html_body": "<p>Hi {{ name }}</p>"},
            )
            assert template.status_code in (200, 201), template.text
            campaign = http.put(
                f"/api/campaigns/{CAMPAIGN}",
                json={"subject": "News", "html_body": "<p>Hi {{ email }}</p>", **scope},
            )
            assert campaign.status_code in (200, 201), campaign.text
        yield (
            base,
            {
                "key": key,
                "client": CLIENT,
                "audience": AUDIENCE,
                "contact": contact.json()["contact_id"],
                "template": TEMPLATE,
                "campaign": CAMPAIGN,
                "email": EMAIL,
            },
        )


def test_schemathesis_finds_no_failure(stack: tuple[str, dict[str, str | int]]) -> None:
    base, values = stack
    with tempfile.TemporaryDirectory(prefix="dm-fuzz-") as workdir:
        config = Path(workdir) / "schemathesis.toml"
        config.write_text(config_toml(values))
        st = Path(sys.executable).with_name("st")
        argv = [
            str(st), "--config-file", str(config), "run", f"{base}/openapi.json",
            "--checks", "all", "--exclude-checks", "positive_data_acceptance",
            "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES),
            "--max-time", str(MAX_TIME), "--workers", str(WORKERS), "--no-color",
            "--generation-database", "none",
        ]  # fmt: skip
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "fuzz.hooks", "PYTHONPATH": str(ROOT)}
        result = subprocess.run(argv, cwd=workdir, env=env, timeout=HARD_TIMEOUT, check=False)
    assert result.returncode == 0, (
        f"schemathesis reported failures (exit {result.returncode}); see its summary above"
    )
