"""The recipient-list benchmark as a slow test (`make bench`): 100,000 members in one
bulk-upsert; asserts the counts agree, the figures are read from the printed table and
bench/results/recipient_lists.json."""

import pytest

from bench import recipient_lists

pytestmark = pytest.mark.slow


def test_recipient_lists_benchmark() -> None:
    figures = recipient_lists.run(100_000)
    assert figures["members"] == 100_000
    assert figures["ancestor_member_count"] == 50_000
