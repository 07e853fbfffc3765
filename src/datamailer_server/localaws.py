"""The local AWS endpoint (SQS and SES) for `datamailer up` and the tests: moto's server.

Moto keeps all state in memory: when the server stops, queues, messages and verified
identities are gone. That is fine for local mode because a restarted `up` runs
`queues create` (idempotent) and re-verifies the demo sender before anything else.

Two ways to run it:
- `moto_server_argv` + `wait_until_ready`: a child process (what `up` uses, so Ctrl-C
  and shutdown are handled like any other child);
- `start_moto_server`: moto's `ThreadedMotoServer` inside this process (tests), stopped
  with `.stop()` or a `with` block; `reset_moto` empties it between tests.
"""

import sys
import threading
import time
import urllib.error
import urllib.request
from types import TracebackType

from moto.server import ThreadedMotoServer

from datamailer_server.localpg import port_in_use

READY_PATH = "/moto-api/"


class LocalAwsError(Exception):
    """The local AWS endpoint cannot start or does not answer."""


def _client_host(host: str) -> str:
    """A wildcard bind address is reached through loopback."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104


def endpoint_url(host: str, port: int) -> str:
    """The URL clients use for a server bound to host:port."""
    return f"http://{_client_host(host)}:{port}"


def moto_server_argv(host: str, port: int) -> list[str]:
    """The command that runs moto's server as a child process with this interpreter."""
    return [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)]


def wait_until_ready(url: str, timeout: float = 30.0) -> None:
    """Return once `url` + /moto-api/ answers over HTTP (any status counts)."""
    deadline = time.monotonic() + timeout
    probe = url.rstrip("/") + READY_PATH
    while True:
        try:
            with urllib.request.urlopen(probe, timeout=2):  # noqa: S310  (local http only)
                return
        except urllib.error.HTTPError:
            return  # the server answered, just not with 2xx
        except OSError:
            if time.monotonic() > deadline:
                raise LocalAwsError(
                    f"the local AWS endpoint did not answer at {probe} within {timeout:.0f}s"
                ) from None
            time.sleep(0.1)


def reset_moto(url: str) -> None:
    """Drop every queue, message and identity the server holds."""
    request = urllib.request.Request(url.rstrip("/") + "/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10):  # noqa: S310  (local http only)
        pass


class LocalMoto:
    """moto's ThreadedMotoServer, started and known to answer."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.endpoint_url = endpoint_url(host, port)
        self._server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)

    def start(self, timeout: float = 30.0) -> "LocalMoto":
        if port_in_use(self.port, _client_host(self.host)):
            raise LocalAwsError(
                f"port {self.port} is in use by another process; pass --aws-port or set AWS_ENDPOINT_URL"
            )
        # ThreadedMotoServer.start() waits forever when its thread fails to bind (a bad
        # host, a lost race for the port): start it from a helper thread and bound the wait.
        starter = threading.Thread(target=self._server.start, daemon=True)
        starter.start()
        starter.join(timeout)
        if starter.is_alive():
            raise LocalAwsError(f"moto's server did not bind {self.host}:{self.port}")
        wait_until_ready(self.endpoint_url, timeout)
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> "LocalMoto":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_moto_server(host: str, port: int, timeout: float = 30.0) -> LocalMoto:
    """Run moto's server in this process on host:port; returns once it answers."""
    return LocalMoto(host, port).start(timeout)
