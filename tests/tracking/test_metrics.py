"""The tracking service's `/metrics`: the pixel and the redirect, answered ahead of the
framework, are still counted, under their route templates, never their tokens."""

from datamailer_core.campaigns.message import click_url
from datamailer_core.security import new_token
from datamailer_core.settings import Settings
from tests.tracking.helpers import BASE, tracking

LATENCY_COUNT = "datamailer_http_request_duration_seconds_count"


def _count(metrics_text: str, route: str, method: str, status: int) -> float:
    labels = f'method="{method}",route="{route}",service="tracking",status="{status}"'
    for line in metrics_text.splitlines():
        if line.startswith(f"{LATENCY_COUNT}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_pixel_and_click_hits_move_the_latency_counts_by_route_template(
    tracking_settings: Settings,
) -> None:
    secret = tracking_settings.security.secret_key.get_secret_value()
    opened, clicked = new_token(), new_token()
    link = click_url(BASE, secret, clicked, "https://example.com/pricing")
    async with tracking(tracking_settings) as http:
        before = (await http.get("/metrics")).text
        for _ in range(3):
            assert (await http.get(f"/t/o/{opened}.gif")).status_code == 200
        assert (await http.head(f"/t/o/{opened}.gif")).status_code == 200
        assert (await http.get(link.removeprefix(BASE))).status_code == 302
        assert (await http.get(f"/t/c/{clicked}?u=https://evil.example&s=bad")).status_code == 400
        response = await http.get("/metrics")
    assert response.status_code == 200
    after = response.text

    assert _count(before, "/t/o/{token}.gif", "GET", 200) == 0
    assert _count(after, "/t/o/{token}.gif", "GET", 200) == 3
    assert _count(after, "/t/o/{token}.gif", "HEAD", 200) == 1
    assert _count(after, "/t/c/{token}", "GET", 302) == 1
    assert _count(after, "/t/c/{token}", "GET", 400) == 1
    assert opened not in after
    assert clicked not in after
    for family in (
        "datamailer_sends_total",
        "datamailer_queue_messages_total",
        "datamailer_dlq_replays_total",
    ):
        assert f"# TYPE {family} counter" in after
