"""Tracking events published from a child process: both ends of the pipe.

SQS calls through aiobotocore cost about 1.2 ms of CPU per `SendMessageBatch`, ten
times what answering ten pixels costs; made in the serving process they set its rate
(a quarter of a bare uvicorn endpoint's). So by default (`TRACKING_EVENT_PUBLISHER=
process`) the serving process only writes each event's body, one JSON line, down a pipe
(`EventProcess`), and a child, `python -m datamailer_tracking.publisher`, reads the
lines and publishes them with `events.EventPublisher` (batches of ten, a few concurrent
senders, refused entries retried).

Backpressure, never loss, as in the process: the child stops reading while its queue is
full, the pipe fills, and once the serving process holds more than `HIGH_WATER` bytes
unsent, `submit` waits for the pipe (the request's answer waits, its event is kept).
At shutdown the serving process closes the pipe; the child publishes everything it read
and exits, reporting what it published and what it could not on its stdout, which the
serving process logs. If the child dies while running, the serving process logs it and
starts another; a line written after the death was noticed goes to the new child. What
the dead child held (read, not yet published) and what sat unread in the pipe is lost:
a crash's cost, not a normal stop's. The child ignores SIGINT and SIGTERM (a Ctrl-C
reaches the whole process group): it stops when its stdin ends, which happens when the
serving process closes it or exits, however it exits.

What it bought (bench/tracking.py, 8 s runs, wrk with 64 connections, on a shared
2-core machine whose load was 4 to 7, so noisy): pixel 40%, 33%, 31% and click 45%,
56%, 50% of the bare endpoint's rate, from 26% and 16% with inline publishing; every
request's event published each time. The child shares the cores with the server, and
under saturation the pipe fills and the service answers at the rate the child
publishes (hence p99s of seconds in those runs); with publishing switched off the
pixel reached 79%. Not yet explained: why the pixel, the cheaper route, measured below
the click (it runs first, right after the warm-up).
"""

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from typing import Final

from datamailer_core.logging import configure_logging
from datamailer_core.queues import QueuePublisher
from datamailer_core.settings import AwsSettings, LogSettings, QueueSettings, Settings, group_env
from datamailer_core.sqs_send import signed_sqs_sender
from datamailer_tracking.events import CLOSE_TIMEOUT_SECONDS, EventPublisher

logger = logging.getLogger("datamailer.tracking.publisher")

# Bytes the serving process holds unsent before `submit` waits: about 10,000 events,
# the in-process queue's capacity, on top of the pipe's own buffer.
HIGH_WATER: Final = 4 * 1024 * 1024
# A body holds at most a 512-character user agent and a link from the request line
# (bounded by the HTTP server's header limit): far below this.
LINE_LIMIT: Final = 1024 * 1024
# The child's own drain (`EventPublisher.close`) plus its start and exit.
EXIT_TIMEOUT_SECONDS: Final = CLOSE_TIMEOUT_SECONDS + 10.0
# A child that dies sooner than this after its start is restarted only after as long,
# so a child that cannot start does not restart in a tight loop.
MIN_LIFETIME_SECONDS: Final = 1.0


def child_env(settings: Settings) -> dict[str, str]:
    """This process's environment with the AWS, queue and log settings replaced by the
    values of `settings` (tests and embedders build Settings in code, not from the
    environment). Nothing else is passed on: the child needs no database or secret key."""
    env = dict(os.environ)
    for group in (settings.aws, settings.queues, settings.log):
        for key, value in group_env(group).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
    return env


class EventProcess:
    """The serving process's end: an `events.EventSink` writing to the child's stdin."""

    def __init__(self, settings: Settings, *, high_water: int = HIGH_WATER) -> None:
        self.env = child_env(settings)
        self.high_water = high_water
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._started_at = 0.0
        self._closing = False
        self._lock = asyncio.Lock()
        self._watchers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self._spawn()

    async def _spawn(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "datamailer_tracking.publisher",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=self.env,
        )
        assert proc.stdin is not None
        proc.stdin.transport.set_write_buffer_limits(high=self.high_water)
        self.proc, self._started_at = proc, time.monotonic()
        watcher = asyncio.create_task(self._watch(proc))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if not self._closing:
            logger.error(
                "tracking event publisher exited; starting another",
                extra={"pid": proc.pid, "returncode": code},
            )
            await self._respawn(proc)

    async def _respawn(self, dead: asyncio.subprocess.Process) -> None:
        async with self._lock:
            if self.proc is not dead or self._closing:
                return  # already replaced (or stopping)
            lived = time.monotonic() - self._started_at
            if lived < MIN_LIFETIME_SECONDS:
                await asyncio.sleep(MIN_LIFETIME_SECONDS - lived)
            self.restarts += 1
            with contextlib.suppress(ProcessLookupError):
                dead.kill()  # a child whose pipe broke but which still runs
            await self._spawn()

    def _writable(self, proc: asyncio.subprocess.Process) -> bool:
        return proc.returncode is None and proc.stdin is not None and not proc.stdin.transport.is_closing()

    async def submit(self, body: str) -> None:
        line = (body + "\n").encode()
        while True:
            proc = self.proc
            assert proc is not None, "EventProcess.start was not awaited"
            assert proc.stdin is not None
            if not self._writable(proc):
                await self._respawn(proc)
                continue
            # A write that meets a broken pipe does not raise (asyncio drops it and
            # closes the transport), so whether it went is read from the transport.
            proc.stdin.write(line)
            if not self._writable(proc):
                await self._respawn(proc)
                continue
            if proc.stdin.transport.get_write_buffer_size() > self.high_water:
                try:
                    await proc.stdin.drain()
                except ConnectionError:
                    # The child went away holding what was buffered; this line is sent again.
                    logger.error("tracking event pipe broke while full", extra={"pid": proc.pid})
                    await self._respawn(proc)
                    continue
            return

    async def close(self, timeout: float = EXIT_TIMEOUT_SECONDS) -> None:
        """Close the pipe and wait for the child to publish what it read and exit."""
        self._closing = True
        proc = self.proc
        if proc is None:
            return
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            proc.stdin.close()
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(proc.stdin.wait_closed(), timeout)
            report = await asyncio.wait_for(proc.stdout.read(), timeout)
            code = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            logger.error(
                "tracking event publisher did not finish at shutdown; what it held is lost",
                extra={"pid": proc.pid},
            )
            return
        finally:
            for watcher in self._watchers:
                watcher.cancel()
        try:
            figures = json.loads(report)
        except ValueError:
            figures = {}
        if code != 0 or figures.get("failed"):
            logger.error(
                "tracking events could not all be published",
                extra={"returncode": code, **figures},
            )
        else:
            logger.info("tracking event publisher stopped", extra=figures)


async def publish_lines(
    reader: asyncio.StreamReader, aws: AwsSettings, queues: QueueSettings
) -> EventPublisher:
    """Publish every line `reader` yields until its end; the publisher's counts tell
    what went and what did not."""
    # A signed SendMessageBatch without botocore's pipeline (`sqs_send`): a third of the CPU.
    async with signed_sqs_sender(aws) as sqs:
        events = EventPublisher(QueuePublisher(sqs, queues))
        events.start()
        try:
            while line := await reader.readline():
                if line.endswith(b"\n"):
                    await events.submit(line[:-1].decode())
                else:
                    # The writer stopped mid-line (it died): not a whole body.
                    events.failed += 1
                    logger.error("tracking event cut short at the end of the pipe")
        finally:
            await events.close()
    return events


async def main() -> int:
    # The environment `child_env` built, and nothing from a .env file: the serving
    # process's settings already include whatever one held.
    aws = AwsSettings(_env_file=None)
    queues = QueueSettings(_env_file=None)
    log = LogSettings(_env_file=None)
    configure_logging(log)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    events = await publish_lines(reader, aws, queues)
    figures = {"published": events.published, "batches": events.batches, "failed": events.failed}
    sys.stdout.write(json.dumps(figures) + "\n")
    sys.stdout.flush()
    return 0 if events.failed == 0 else 1


if __name__ == "__main__":
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    sys.exit(asyncio.run(main()))
