"""Worker tests commit across connections (claims, leases, pollers, processes), so each
gets a fresh migrated database and real sessionmakers, plus a reset moto with queues."""

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from datamailer_core.settings import Settings
from datamailer_server import ops
from datamailer_workers.deps import WorkerDeps, open_deps
from tests.conftest import run_sync, settings_for


@dataclass
class WorkerEnv:
    database_url: str
    aws_endpoint: str
    queue_env: dict[str, str] = field(default_factory=dict)

    def settings(self, **env: str) -> Settings:
        return settings_for(self.database_url, self.aws_endpoint, **self.queue_env, **env)

    def environ(self, **env: str) -> dict[str, str]:
        """The same configuration as process environment variables."""
        return {
            "DATAMAILER_ENV": "test",
            "DATABASE_URL": self.database_url,
            "AWS_ENDPOINT_URL": self.aws_endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "SECRET_KEY": "test-secret-key",
            "LOG_FORMAT": "console",
            "LOG_LEVEL": "WARNING",
            **self.queue_env,
            **env,
        }


@pytest.fixture
def worker_env(make_database: Callable[[], str], aws_endpoint: str) -> WorkerEnv:
    database_url = make_database()
    urls = run_sync(ops.create_queues(settings_for(database_url, aws_endpoint)))
    return WorkerEnv(database_url, aws_endpoint, {ops.QUEUE_ENV[q]: u for q, u in urls.items()})


@pytest.fixture
async def deps(worker_env: WorkerEnv) -> AsyncIterator[WorkerDeps]:
    async with open_deps(worker_env.settings()) as opened:
        yield opened
