"""The embedded PostgreSQL that `datamailer up` and the tests fall back on: real clusters."""

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from datamailer_server.localpg import (
    LocalPostgres,
    LocalPostgresError,
    find_pg_bin,
    free_port,
    port_in_use,
)

MakeCluster = Callable[..., LocalPostgres]


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not tmp_path: /tmp/pytest-of-root is mode 700, and under root the server runs as an
    # unprivileged user that must reach its data directory.
    path = Path(tempfile.mkdtemp(prefix="dm-localpg-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_cluster(workdir: Path) -> Iterator[MakeCluster]:
    """Clusters in `workdir`, all stopped at teardown even when the test failed."""
    made: list[LocalPostgres] = []

    def make(port: int | None = None, name: str = "data") -> LocalPostgres:
        cluster = LocalPostgres(workdir / name, port or free_port())
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        try:
            cluster.stop()
        except LocalPostgresError:
            pass


async def fetch(cluster: LocalPostgres, database: str, query: str) -> object:
    dsn = cluster.url(database).replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def execute(cluster: LocalPostgres, database: str, *statements: str) -> None:
    dsn = cluster.url(database).replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def test_started_cluster_answers_over_tcp_on_its_port(make_cluster: MakeCluster) -> None:
    cluster = make_cluster()
    cluster.ensure_initialized()
    cluster.start()

    assert cluster.url("app") == f"postgresql+asyncpg://postgres@127.0.0.1:{cluster.port}/app"
    assert await fetch(cluster, "postgres", "select 1") == 1
    assert await fetch(cluster, "postgres", "show server_encoding") == "UTF8"
    if os.geteuid() == 0:
        # PostgreSQL refuses root: the server must be running as some other user.
        assert (cluster.data_dir / "postmaster.pid").stat().st_uid != 0


async def test_data_survives_a_stop_and_start(make_cluster: MakeCluster) -> None:
    cluster = make_cluster()
    cluster.start()
    cluster.create_database("kept")
    await execute(cluster, "kept", "create table notes (body text)", "insert into notes values ('hello')")

    cluster.stop()
    assert not cluster.is_running()
    assert not port_in_use(cluster.port)
    cluster.start()

    assert await fetch(cluster, "kept", "select body from notes") == "hello"


async def test_setup_steps_are_safe_to_repeat(make_cluster: MakeCluster) -> None:
    cluster = make_cluster()
    cluster.ensure_initialized()
    version_file = cluster.data_dir / "PG_VERSION"
    initialized_at = version_file.stat().st_mtime_ns
    cluster.start()
    postmaster = (cluster.data_dir / "postmaster.pid").read_text().splitlines()[0]

    cluster.ensure_initialized()
    cluster.start()
    cluster.create_database("twice")
    cluster.create_database("twice")

    assert version_file.stat().st_mtime_ns == initialized_at
    assert await fetch(cluster, "twice", "select current_database()") == "twice"
    assert (cluster.data_dir / "postmaster.pid").read_text().splitlines()[0] == postmaster


async def test_a_cluster_left_running_by_a_crashed_process_is_adopted(make_cluster: MakeCluster) -> None:
    first = make_cluster()
    first.start()
    first.create_database("left_behind")
    postmaster = (first.data_dir / "postmaster.pid").read_text().splitlines()[0]

    # A new process (a restarted `up`) knows nothing but the data dir and the port.
    second = make_cluster(port=first.port)
    second.start()

    assert (second.data_dir / "postmaster.pid").read_text().splitlines()[0] == postmaster
    assert await fetch(second, "left_behind", "select 1") == 1


async def test_a_stale_pid_file_from_a_crash_does_not_block_start(make_cluster: MakeCluster) -> None:
    cluster = make_cluster()
    cluster.start()
    cluster.stop()
    # After a container restart the recorded pid may belong to an unrelated live process.
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = cluster.data_dir / "postmaster.pid"
        pid_file.write_text(f"{bystander.pid}\n{cluster.data_dir}\n0\n{cluster.port}\n\n\n\nready\n")
        cluster.stop()
        assert bystander.poll() is None, "stop() signalled a process that is not our server"

        cluster.start()

        assert await fetch(cluster, "postgres", "select 1") == 1
    finally:
        bystander.kill()
        bystander.wait()


def test_a_port_taken_by_another_process_is_reported(make_cluster: MakeCluster) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        cluster = make_cluster(port=port)

        with pytest.raises(LocalPostgresError, match=f"port {port} is in use by another process"):
            cluster.start()

        assert not cluster.is_running()


def test_our_cluster_running_on_another_port_is_reported(make_cluster: MakeCluster) -> None:
    running = make_cluster()
    running.start()
    other_port = free_port()

    with pytest.raises(LocalPostgresError, match=f"already running on port {running.port}"):
        make_cluster(port=other_port).start()


def test_port_helpers_see_listeners() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert port_in_use(listener.getsockname()[1])
    assert not port_in_use(free_port())


def test_pg_bin_override_must_hold_the_server(monkeypatch: pytest.MonkeyPatch, workdir: Path) -> None:
    found = find_pg_bin()
    assert (found / "initdb").exists()

    monkeypatch.setenv("PG_BIN", str(found))
    assert find_pg_bin() == found
    monkeypatch.setenv("PG_BIN", str(workdir))
    with pytest.raises(LocalPostgresError, match="PG_BIN"):
        find_pg_bin()
