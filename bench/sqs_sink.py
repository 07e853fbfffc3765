"""A minimal local SQS endpoint for benchmarks: answers `SendMessage` and
`SendMessageBatch` (the JSON protocol botocore speaks) as accepted and counts the
messages. moto's server costs more CPU per call than the service it would measure, and
the benchmark machine has few cores; correctness stays with moto in the tests.

HTTP/1.1 keep-alive on a bare `asyncio.Protocol`. `GET /count` returns the message
count; anything else is 404.

    python -m bench.sqs_sink --port 4580
"""

import argparse
import asyncio
import json
import os

_PREFIX = f"sqs-sink-{os.getpid()}-"


def _response(status: bytes, body: bytes, *, close: bool) -> bytes:
    head = (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: application/x-amz-json-1.0\r\n"
        b"x-amzn-RequestId: 00000000-0000-0000-0000-000000000000\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
    )
    return head + (b"Connection: close\r\n\r\n" if close else b"\r\n") + body


class SqsSink(asyncio.Protocol):
    count = 0

    def __init__(self) -> None:
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
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        lines = bytes(self.buffer[:end]).split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        if len(self.buffer) < end + 4 + length:
            return False
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        close = headers.get(b"connection", b"").lower() == b"close"
        method, target = lines[0].split(b" ")[:2]
        assert self.transport is not None
        self.transport.write(self._answer(method, target, headers.get(b"x-amz-target", b""), body, close))
        if close:
            self.transport.close()
            return False
        return True

    def _answer(self, method: bytes, path: bytes, operation: bytes, body: bytes, close: bool) -> bytes:
        if method == b"GET" and path == b"/count":
            return _response(b"200 OK", json.dumps({"count": SqsSink.count}).encode(), close=close)
        if operation == b"AmazonSQS.SendMessageBatch":
            entries = json.loads(body)["Entries"]
            SqsSink.count += len(entries)
            ok = [{"Id": e["Id"], "MessageId": f"{_PREFIX}{SqsSink.count}-{e['Id']}", "MD5OfMessageBody": ""}
                  for e in entries]  # fmt: skip
            return _response(b"200 OK", json.dumps({"Successful": ok, "Failed": []}).encode(), close=close)
        if operation == b"AmazonSQS.SendMessage":
            SqsSink.count += 1
            answer = {"MessageId": f"{_PREFIX}{SqsSink.count}", "MD5OfMessageBody": ""}
            return _response(b"200 OK", json.dumps(answer).encode(), close=close)
        error = {"__type": "com.amazonaws.sqs#UnsupportedOperation", "message": "the sink only accepts sends"}
        return _response(b"400 Bad Request", json.dumps(error).encode(), close=close)


async def serve(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(SqsSink, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4580)
    arguments = parser.parse_args()
    try:
        asyncio.run(serve(arguments.host, arguments.port))
    except KeyboardInterrupt:
        pass
