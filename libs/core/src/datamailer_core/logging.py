"""Structured logging on the standard library: one JSON object per line in production,
a readable line locally. A correlation id follows a message from request to SES call."""

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from datamailer_core.settings import LogSettings

correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)
# Where a queue message carries the id (its `metadata`), and the id's largest size.
CORRELATION_KEY = "correlation_id"
MAX_CORRELATION_ID = 64


def usable_correlation_id(value: object) -> str | None:
    """`value` when it can name a flow in logs (a printable string of at most 64
    characters, e.g. a caller's X-Request-ID), else None."""
    if isinstance(value, str) and 0 < len(value) <= MAX_CORRELATION_ID and value.isprintable():
        return value
    return None


_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if cid := correlation_id.get():
            entry["correlation_id"] = cid
        entry.update(_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        cid = correlation_id.get()
        line = f"{record.levelname.lower():7} {record.name}: {record.getMessage()}"
        line += f" [{cid}]" if cid else ""
        line += f" {extras}" if extras else ""
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(settings: LogSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
    for noisy in ("botocore", "aiobotocore", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
