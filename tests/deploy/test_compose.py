"""compose.yaml against runtime.md's "Deploying": PostgreSQL, the API, tracking, workers
and the scheduler from one image, each long-running service health-checked, LocalStack
and the queue-creating job behind the `aws-local` profile, and only the documented
configuration variables. (No Docker engine here: the file is read, not run.)"""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# The product spec sits in shared/ beside the checkout (CI) or beside the worktrees.
SPEC_CANDIDATES = [base / "shared" / "spec" / "runtime.md" for base in (ROOT.parent, ROOT.parent.parent)]
DATAMAILER_SERVICES = {"api", "tracking", "workers", "scheduler"}
ONE_SHOT = {"migrate", "queues"}
AWS_LOCAL = {"localstack", "queues"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def documented_variables() -> list[re.Pattern[str]]:
    """The names in runtime.md's configuration section (`SQS_*_QUEUE_URL` as a pattern)."""
    spec = next((path for path in SPEC_CANDIDATES if path.is_file()), None)
    if spec is None:
        pytest.skip(f"the product spec (shared/spec/runtime.md) is not beside {ROOT}")
    section = spec.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"`([A-Z][A-Z0-9_*]+)`", section)
    return [re.compile(re.escape(name).replace(r"\*", "[A-Z_]+")) for name in names]


def argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    assert isinstance(command, list)
    return [str(part) for part in command]


def test_every_runtime_role_is_a_service_of_the_one_image(services: dict[str, dict[str, Any]]) -> None:
    assert {"postgres", *DATAMAILER_SERVICES, *ONE_SHOT, "localstack"} <= set(services)
    ours = {name for name, service in services.items() if "build" in service}
    assert ours == DATAMAILER_SERVICES | ONE_SHOT
    assert {services[name]["image"] for name in ours} == {"datamailer:local"}
    assert {services[name]["build"] for name in ours} == {"."}
    assert {name: argv(services[name])[:2] for name in DATAMAILER_SERVICES} == {
        "api": ["datamailer", "api"],
        "tracking": ["datamailer", "tracking"],
        "workers": ["datamailer", "worker"],
        "scheduler": ["datamailer", "scheduler"],
    }
    assert argv(services["workers"])[2] == "all"
    assert argv(services["migrate"]) == ["datamailer", "migrate"]
    assert argv(services["queues"]) == ["datamailer", "queues", "create"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["localstack"]["image"].startswith("localstack/localstack")


def test_every_long_running_service_has_a_health_check(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no", name
            continue
        check = service.get("healthcheck", {}).get("test")
        assert isinstance(check, list), f"{name} has no health check"
        assert check[0] == "CMD", name
    # A health check that asks a port must ask the one the service listens on.
    for name, port, path in [("api", "8000", "/health"), ("tracking", "8001", "/health")]:
        assert f"127.0.0.1:{port}{path}" in " ".join(services[name]["healthcheck"]["test"])
        assert argv(services[name])[argv(services[name]).index("--port") + 1] == port
    workers = services["workers"]
    port = argv(workers)[argv(workers).index("--metrics-port") + 1]
    assert f"127.0.0.1:{port}/metrics" in " ".join(workers["healthcheck"]["test"])


def test_local_aws_is_a_profile_the_services_wait_for(services: dict[str, dict[str, Any]]) -> None:
    profiled = {name for name, service in services.items() if "profiles" in service}
    assert profiled == AWS_LOCAL
    assert all(services[name]["profiles"] == ["aws-local"] for name in AWS_LOCAL)
    assert services["queues"]["depends_on"] == {"localstack": {"condition": "service_healthy"}}
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in DATAMAILER_SERVICES:
        assert services[name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
            # Without the profile there is no queues job: the dependency must not be required.
            "queues": {"condition": "service_completed_successfully", "required": False},
        }, name


def test_the_environment_names_only_documented_variables(services: dict[str, dict[str, Any]]) -> None:
    documented = documented_variables()
    assert len(documented) >= 12
    ours = [service for service in services.values() if "build" in service]
    names = {name for service in ours for name in service["environment"]}
    assert {"DATABASE_URL", "AWS_ENDPOINT_URL", "PUBLIC_BASE_URL"} <= names
    assert len([n for n in names if n.startswith("SQS_")]) == 4
    undocumented = {name for name in names if not any(p.fullmatch(name) for p in documented)}
    assert undocumented == set()
    # Every service sees the same configuration, pointed at the compose PostgreSQL and,
    # with the profile, at LocalStack.
    assert len({tuple(sorted(service["environment"].items())) for service in ours}) == 1
    environment = ours[0]["environment"]
    assert "@postgres:5432/" in environment["DATABASE_URL"]
    assert environment["DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert environment["AWS_ENDPOINT_URL"] == "http://localstack:4566"
    assert all(
        v.startswith("http://localstack:4566/") for k, v in environment.items() if k.startswith("SQS_")
    )
