"""An embedded PostgreSQL cluster for `datamailer up` and the test suite.

The cluster lives in a data directory of ours (kept across runs) and listens on
127.0.0.1 only, with trust authentication: it is a developer's local database, never a
deployment. Server binaries come from the system or from the `pgserver` wheel
(`find_pg_bin`).

PostgreSQL refuses to run as root. Under root the server runs as an unprivileged system
user (`postgres` when it exists, else `datamailer-pg`, created on first use) that owns
the data directory; the data directory's parents must therefore be searchable by that
user, which is checked up front (a path under /root, mode 700, is not).
"""

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]

SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
FALLBACK_SERVER_USER = "datamailer-pg"
NOT_FOUND = (
    "PostgreSQL server binaries not found: install Debian's postgresql package or "
    "`pip install pgserver`, or set DATABASE_URL"
)


class LocalPostgresError(Exception):
    """The embedded cluster cannot be found, initialized, started or reached."""


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something answers on host:port or the address cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        if probe.connect_ex((host, port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Same option servers use, so a port in TIME_WAIT still counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _has_server_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in SERVER_BINARIES)


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)


def find_pg_bin() -> Path:
    """The directory holding initdb, pg_ctl and postgres.

    Looked up in order: $PG_BIN, `pg_config --bindir`, the newest
    /usr/lib/postgresql/*/bin, pg_ctl on PATH, the `pgserver` wheel.
    """
    if explicit := os.environ.get("PG_BIN"):
        path = Path(explicit)
        if not _has_server_binaries(path):
            raise LocalPostgresError(f"PG_BIN={explicit} does not hold {', '.join(SERVER_BINARIES)}")
        return path
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        # Debian's libpq-dev ships pg_config without the server, hence the check below.
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    candidates.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True))
    if pg_ctl := shutil.which("pg_ctl"):
        candidates.append(Path(pg_ctl).resolve().parent)
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        candidates.extend(Path(p) / "pginstall" / "bin" for p in spec.submodule_search_locations)
    for candidate in candidates:
        if _has_server_binaries(candidate):
            return candidate
    raise LocalPostgresError(NOT_FOUND)


@dataclass(frozen=True)
class _ServerUser:
    name: str
    uid: int
    gid: int
    home: str


def _server_user() -> _ServerUser | None:
    """The unprivileged user the server runs as when we are root; None when we are not."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_SERVER_USER):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return _ServerUser(name, entry.pw_uid, entry.pw_gid, entry.pw_dir)
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    argv = [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    try:
        subprocess.run([*argv, FALLBACK_SERVER_USER], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        raise LocalPostgresError(
            f"PostgreSQL cannot run as root and creating the system user "
            f"{FALLBACK_SERVER_USER} failed ({str(detail).strip()}); run as a normal user "
            "or set DATABASE_URL"
        ) from None
    entry = pwd.getpwnam(FALLBACK_SERVER_USER)
    return _ServerUser(FALLBACK_SERVER_USER, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


class LocalPostgres:
    """One PostgreSQL cluster in `data_dir`, served on 127.0.0.1:`port`.

    Its log is `<data_dir>.log` beside the data directory; its Unix socket lives in a
    private directory under the system temp dir (socket paths are limited to 107 bytes).
    Every method is safe to call twice, and from several processes at once.
    """

    def __init__(
        self, data_dir: Path, port: int, *, user: str = "postgres", start_timeout: float = 60.0
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.user = user
        self.start_timeout = start_timeout
        self.log_file = self.data_dir.parent / f"{self.data_dir.name}.log"
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        self.socket_dir = Path(tempfile.gettempdir()) / f"datamailer-pg-{digest}"
        self._bin: Path | None = None
        self._runas: _ServerUser | None = None
        self._resolved = False

    # --- public API -------------------------------------------------------------

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{database}"

    def ensure_initialized(self) -> None:
        """Create the cluster once (initdb); a no-op when it already exists."""
        with self._lock():
            self._prepare_dirs()
            if (self.data_dir / "PG_VERSION").exists():
                return
            if any(self.data_dir.iterdir()):
                raise LocalPostgresError(f"{self.data_dir} is neither empty nor a PostgreSQL data directory")
            self._run(
                [
                    str(self._pg("initdb")),
                    "-D",
                    str(self.data_dir),
                    "--auth=trust",
                    "-U",
                    self.user,
                    "--encoding=UTF8",
                    "--locale=C",
                ],
                what="initdb",
            )

    def start(self) -> None:
        """Start the cluster (initializing it first if needed) and wait until it accepts
        TCP connections. A cluster of ours already running on our port (left by a crashed
        `up`) is adopted as is."""
        self.ensure_initialized()
        with self._lock():
            running_port = self._running_port()
            if running_port is not None:
                if running_port != self.port:
                    raise LocalPostgresError(
                        f"the cluster in {self.data_dir} is already running on port "
                        f"{running_port}; pass --pg-port {running_port} or stop it with "
                        f"`{self._pg('pg_ctl')} stop -D {self.data_dir}`"
                    )
                self._wait_for_tcp()
                return
            if port_in_use(self.port):
                raise LocalPostgresError(
                    f"port {self.port} is in use by another process; pass --pg-port or set DATABASE_URL"
                )
            self._prepare_socket_dir(self._server_user())
            self._clear_stale_socket_locks()
            options = " ".join(
                [
                    f"-p {self.port}",
                    f"-k {shlex.quote(str(self.socket_dir))}",
                    "-c listen_addresses=127.0.0.1",
                ]
            )
            result = self._run(
                [
                    str(self._pg("pg_ctl")),
                    "start",
                    "-w",
                    "-t",
                    str(int(self.start_timeout)),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-o",
                    options,
                ],
                what="pg_ctl start",
                check=False,
                # Ctrl-C in the terminal must not reach the postmaster: `up` stops it in order.
                new_session=True,
            )
            if result.returncode != 0:
                with contextlib.suppress(OSError):
                    self.socket_dir.rmdir()
                raise LocalPostgresError(
                    f"PostgreSQL did not start on port {self.port} (log {self.log_file}):\n{self._log_tail()}"
                )
            self._wait_for_tcp()

    def stop(self) -> None:
        """Stop the cluster (fast shutdown: open sessions are rolled back); a no-op when it
        is not running."""
        with self._lock():
            # Our own check, not `pg_ctl status`: pg_ctl would signal whatever process
            # now holds a recycled pid from a stale postmaster.pid.
            if self._running_port() is None:
                return
            self._run(
                [str(self._pg("pg_ctl")), "stop", "-D", str(self.data_dir), "-m", "fast", "-w"],
                what="pg_ctl stop",
            )
            with contextlib.suppress(OSError):
                self.socket_dir.rmdir()  # empty once the server is down; keeps /tmp tidy

    def is_running(self) -> bool:
        return self._running_port() is not None

    def create_database(self, name: str) -> None:
        """Create database `name` unless it exists. Blocking; callable with or without a
        running event loop (the work happens on a loop of its own in a worker thread)."""
        with ThreadPoolExecutor(1) as pool:
            try:
                pool.submit(asyncio.run, self._create_database(name)).result()
            except (OSError, asyncpg.PostgresError) as exc:
                raise LocalPostgresError(f"could not create database {name!r}: {exc}") from None

    # --- internals ----------------------------------------------------------------

    async def _create_database(self, name: str) -> None:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=self.port, user=self.user, database="postgres", timeout=10
        )
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                quoted = '"' + name.replace('"', '""') + '"'
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await conn.execute(f"CREATE DATABASE {quoted}")
        finally:
            await conn.close()

    def _pg(self, binary: str) -> Path:
        if self._bin is None:
            self._bin = find_pg_bin()
        return self._bin / binary

    def _server_user(self) -> _ServerUser | None:
        if not self._resolved:
            self._runas = _server_user()
            self._resolved = True
        return self._runas

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialize init/start/stop across processes (pytest-xdist workers, two `up`s)."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.data_dir.parent / f".{self.data_dir.name}.lock"
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _prepare_dirs(self) -> None:
        runas = self._server_user()
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.log_file.touch(mode=0o640, exist_ok=True)
        if runas is not None:
            if self.data_dir.stat().st_uid != runas.uid:
                _chown_tree(self.data_dir, runas.uid, runas.gid)
            os.chown(self.log_file, runas.uid, runas.gid)
            self._check_reachable(runas)

    def _check_reachable(self, runas: _ServerUser) -> None:
        """The server user must reach the binaries, the data dir and the log through every
        parent directory: a venv or data dir under /root (mode 700) is the usual trap."""
        for path, flag in ((self._pg("pg_ctl"), "-x"), (self.data_dir, "-w"), (self.log_file, "-w")):
            if self._as_server_user_test(flag, path):
                continue
            blocker = next(
                (p for p in reversed(path.parents) if not self._as_server_user_test("-x", p)),
                path,
            )
            raise LocalPostgresError(
                f"PostgreSQL cannot run as root and runs as user {runas.name!r}, which cannot "
                f"reach {path} ({blocker} is not accessible to it); put the data directory "
                "(and PostgreSQL binaries) under world-searchable directories such as /srv or "
                "/tmp, run as a normal user, or set DATABASE_URL"
            )

    def _as_server_user_test(self, flag: str, path: Path) -> bool:
        return self._run(["test", flag, str(path)], what="access check", check=False).returncode == 0

    def _prepare_socket_dir(self, runas: _ServerUser | None) -> None:
        owner = runas.uid if runas is not None else os.geteuid()
        with contextlib.suppress(FileExistsError):
            self.socket_dir.mkdir(mode=0o700)
            if runas is not None:
                os.chown(self.socket_dir, runas.uid, runas.gid)
        info = self.socket_dir.lstat()
        # The directory sits in a shared /tmp: never trust one somebody else made.
        if not self.socket_dir.is_dir() or self.socket_dir.is_symlink() or info.st_uid != owner:
            raise LocalPostgresError(
                f"{self.socket_dir} exists but is not a directory owned by uid {owner}; remove it"
            )

    def _running_port(self) -> int | None:
        """The port of our postmaster when it runs; removes a pid file whose process is gone
        or is not our postmaster (pid reuse after a container restart)."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid = int(lines[0])
            port = int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # stale; the postmaster itself cleans it up on start
        except PermissionError:
            pass
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists():
            args = cmdline.read_bytes().split(b"\0")
            if str(self.data_dir).encode() not in args:
                # Another process now has that pid; the postmaster would refuse to start.
                pid_file.unlink(missing_ok=True)
                return None
        return port

    def _clear_stale_socket_locks(self) -> None:
        """Our postmaster is not running, so socket files for our port in our private
        directory are leftovers of a crash (their pid may have been reused)."""
        for name in (f".s.PGSQL.{self.port}", f".s.PGSQL.{self.port}.lock"):
            with contextlib.suppress(FileNotFoundError):
                (self.socket_dir / name).unlink()

    def _wait_for_tcp(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.settimeout(1.0)
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise LocalPostgresError(
                    f"PostgreSQL did not accept connections on 127.0.0.1:{self.port} within "
                    f"{self.start_timeout:.0f}s (log {self.log_file}):\n{self._log_tail()}"
                )
            time.sleep(0.1)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"

    def _run(
        self, argv: Sequence[str], *, what: str, check: bool = True, new_session: bool = False
    ) -> "subprocess.CompletedProcess[str]":
        """Run a PostgreSQL tool, as the server user when we are root."""
        runas = self._server_user()
        # PG* variables (PGDATA, PGPORT, PGOPTIONS...) must not steer the server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        if runas is not None:
            env.update(HOME=runas.home, USER=runas.name, LOGNAME=runas.name)
        try:
            result = subprocess.run(
                list(argv),
                env=env,
                cwd="/",  # the caller's cwd (e.g. /root) may be unreadable to the server user
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                user=runas.uid if runas else None,
                group=runas.gid if runas else None,
                extra_groups=[] if runas else None,
                start_new_session=new_session,
                timeout=self.start_timeout + 30,
            )
        except subprocess.TimeoutExpired:
            raise LocalPostgresError(f"{what} did not finish in time") from None
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EACCES):
                raise LocalPostgresError(f"{what}: cannot run {argv[0]} ({exc.strerror})") from None
            raise
        if check and result.returncode != 0:
            output = (result.stderr or result.stdout).strip()
            raise LocalPostgresError(f"{what} failed in {self.data_dir}: {output}")
        return result
