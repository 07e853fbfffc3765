"""The tracking benchmark as a slow test (`make bench`): pixel and click rates and p99
next to a bare uvicorn GIF endpoint; the figures are read from the printed table and
bench/results/tracking.json. Asserts what must hold whatever the machine: every answer
was right and every request served was published."""

import pytest

from bench import tracking

pytestmark = pytest.mark.slow


def test_tracking_benchmark() -> None:
    figures = tracking.run()
    for kind in ("bare", "pixel", "click"):
        assert figures[kind]["requests"] > 0
        assert figures[kind]["bad_status"] == 0
        assert figures[kind]["socket_errors"] == 0
    assert figures["events_published"] >= figures["events_expected_at_least"]
