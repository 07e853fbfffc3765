"""The snapshot benchmark as a slow test (`make bench`): 1,000,000 contacts; asserts the
row counts agree, the timing is read from the printed table and bench/results/snapshot.json."""

import pytest

from bench import snapshot

pytestmark = pytest.mark.slow


def test_snapshot_benchmark() -> None:
    figures = snapshot.run()
    assert figures["contacts"] == 1_000_000
    assert 0 < figures["skipped"] < figures["recipients"] < figures["contacts"]
    assert figures["pending"] + figures["skipped"] == figures["recipients"]
    assert sum(figures["skipped_by_reason"].values()) == figures["skipped"]
