"""The deployment artifacts as built: the Lambda zip (once per session, for this
interpreter), unpacked beside a virtual environment that has none of the project in it.
The worker fixtures (a fresh migrated database, moto with the queues) are reused."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from datamailer_server import lambda_zip
from tests.workers.conftest import deps, worker_env

__all__ = ["deps", "worker_env"]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def lambda_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("lambda") / "datamailer-lambda.zip"
    lambda_zip.build(output, root=ROOT, target=lambda_zip.Target.local())
    return output


@pytest.fixture(scope="session")
def lambda_root(lambda_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zip unpacked, as Lambda lays it out under /var/task."""
    task = tmp_path_factory.mktemp("task")
    with zipfile.ZipFile(lambda_artifact) as archive:
        archive.extractall(task)
    return task


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a new virtual environment: the standard library only."""
    env = tmp_path_factory.mktemp("bare-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    return env / "bin" / "python"
