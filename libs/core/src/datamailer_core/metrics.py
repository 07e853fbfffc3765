"""Prometheus metrics. Each process builds one `Metrics` on its own registry (no global
state, so several apps can live in one test process).

Labels are bounded sets only: a route is its template (`/t/o/{token}.gif`), never the
raw path, so tokens and ids never become series."""

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Any other method a client sends is counted as OTHER, so it cannot mint series.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        r = self.registry
        self.request_latency = Histogram(
            "datamailer_http_request_duration_seconds",
            "HTTP request latency",
            ["service", "method", "route", "status"],
            registry=r,
        )
        self.queue_messages = Counter(
            "datamailer_queue_messages_total",
            "Queue records by outcome (received, acked, failed)",
            ["queue", "outcome"],
            registry=r,
        )
        self.sends = Counter(
            "datamailer_sends_total", "SES sends by stream and outcome", ["stream", "outcome"], registry=r
        )
        self.ses_throttles = Counter("datamailer_ses_throttles_total", "SES throttling answers", registry=r)
        self.send_rate = Gauge(
            "datamailer_send_rate", "Current account-wide send rate per second", registry=r
        )
        self.idempotency_skips = Counter(
            "datamailer_idempotency_skips_total",
            "Records acknowledged without a send",
            ["stream"],
            registry=r,
        )
        self.dlq_replays = Counter(
            "datamailer_dlq_replays_total", "Messages replayed from a DLQ", ["queue"], registry=r
        )
        # Read by the scheduler (`repositories.health`), also published to CloudWatch.
        self.stuck_campaigns = Gauge(
            "datamailer_stuck_campaigns",
            "Sending campaigns fed nothing for STUCK_CAMPAIGN_SECONDS",
            registry=r,
        )
        self.transactional_queued_seconds = Gauge(
            "datamailer_transactional_queued_seconds",
            "Age of the oldest transactional message not yet taken by a worker",
            registry=r,
        )

        # Bound children by (service, method, route, status): `labels()` costs about a
        # microsecond more per call than a dict lookup, on every request.
        self._latency_children: dict[tuple[str, str, str, str], Any] = {}

    def observe_request(self, service: str, method: str, route: str, status: int, seconds: float) -> None:
        key = (service, method if method in HTTP_METHODS else "OTHER", route, str(status))
        child = self._latency_children.get(key)
        if child is None:
            child = self._latency_children[key] = self.request_latency.labels(*key)
        child.observe(seconds)

    def record_dlq_replay(self, queue: str, count: int = 1) -> None:
        """Messages put back on `queue` from its DLQ (`datamailer dlq replay`)."""
        if count > 0:
            self.dlq_replays.labels(queue).inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
