"""A minimal local SES-compatible endpoint for benchmarks: answers SES v2 `SendEmail`
(`POST /v2/email/outbound-emails`) with 200 and a unique `MessageId`, and `SendBulkEmail`
(`POST /v2/email/outbound-bulk-emails`) with one `SUCCESS` result and `MessageId` per
entry, counts the emails (one per entry) and the calls, and nothing else. moto's server
does a few hundred SES calls per second, too few to measure a fast pipeline; correctness
stays with moto in the tests.

HTTP/1.1 with keep-alive on a bare `asyncio.Protocol` (no framework), so one process
answers many thousands of calls per second. `GET /count` returns the count and this
process's CPU seconds (and `calls`); `POST /reset` sets the count to 0. Anything else is 404.

    python -m bench.ses_sink --port 4579
"""

import argparse
import asyncio
import itertools
import json
import os
import resource
import time

SEND_PATH = b"/v2/email/outbound-emails"
BULK_PATH = b"/v2/email/outbound-bulk-emails"
# Each BulkEmailEntry has one `"Destination"` key; inside template data (a JSON string)
# the quotes are escaped, so counting the bytes counts the entries.
_ENTRY_KEY = b'"Destination"'
_PREFIX = f"sink-{os.getpid()}-".encode()


def _response(status: bytes, body: bytes, *, close: bool) -> bytes:
    head = (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
        b"x-amzn-RequestId: 00000000-0000-0000-0000-000000000000\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
    )
    return head + (b"Connection: close\r\n\r\n" if close else b"\r\n") + body


class Counters:
    def __init__(self) -> None:
        self.sent = 0
        self.calls = 0
        self.ids = itertools.count(1)
        self.first: float | None = None
        self.last: float | None = None

    def snapshot(self) -> dict[str, float | int | None]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"count": self.sent, "calls": self.calls, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "first": self.first, "last": self.last}  # fmt: skip


class SinkProtocol(asyncio.Protocol):
    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self._one_request():
            pass

    def _one_request(self) -> bool:
        """Answer one complete request from the buffer; False when more bytes are needed."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buffer[:end])
        lines = head.split(b"\r\n")
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if len(self.buffer) < end + 4 + length:
            return False
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        method, target = lines[0].split(b" ")[:2]
        assert self.transport is not None
        self.transport.write(self._answer(method, target.split(b"?")[0], body, close=close))
        if close:
            self.transport.close()
            return False
        return True

    def _sent(self, n: int) -> None:
        counters = self.counters
        counters.sent += n
        counters.calls += 1
        now = time.time()
        counters.first = counters.first or now
        counters.last = now

    def _answer(self, method: bytes, path: bytes, request: bytes, *, close: bool) -> bytes:
        counters = self.counters
        if method == b"POST" and path == SEND_PATH:
            self._sent(1)
            body = b'{"MessageId":"' + _PREFIX + str(next(counters.ids)).encode() + b'"}'
            return _response(b"200 OK", body, close=close)
        if method == b"POST" and path == BULK_PATH:
            n = request.count(_ENTRY_KEY)
            self._sent(n)
            results = b",".join(
                b'{"Status":"SUCCESS","MessageId":"' + _PREFIX + str(next(counters.ids)).encode() + b'"}'
                for _ in range(n)
            )
            return _response(b"200 OK", b'{"BulkEmailEntryResults":[' + results + b"]}", close=close)
        if method == b"GET" and path == b"/count":
            return _response(b"200 OK", json.dumps(counters.snapshot()).encode(), close=close)
        if method == b"POST" and path == b"/reset":
            counters.sent, counters.calls, counters.first, counters.last = 0, 0, None, None
            return _response(b"200 OK", b"{}", close=close)
        body = b'{"__type":"NotFoundException","message":"the benchmark sink answers SendEmail and SendBulkEmail only"}'
        return _response(b"404 Not Found", body, close=close)


async def serve(host: str, port: int) -> None:
    counters = Counters()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SinkProtocol(counters), host, port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4579)
    arguments = parser.parse_args()
    try:
        asyncio.run(serve(arguments.host, arguments.port))
    except KeyboardInterrupt:
        pass
