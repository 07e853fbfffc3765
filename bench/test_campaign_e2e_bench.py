"""The end-to-end campaign benchmark as a slow test (`make bench`): 100,000 contacts
through the API, the scheduler, two `campaign-email` workers, moto's SQS and the SES
sink. Asserts that every eligible recipient was sent exactly once; the timings are read
from the printed table and bench/results/campaign_e2e.json."""

import pytest

from bench import campaign_e2e

pytestmark = pytest.mark.slow


def test_campaign_e2e_benchmark() -> None:
    figures = campaign_e2e.run()
    assert figures["status"] == "sent"
    assert figures["recipients"] == 100_000
    eligible = figures["eligible"]
    assert figures["recipient_rows"] == figures["recipients"]
    assert figures["by_status"] == {"sent": eligible, "skipped": figures["recipients"] - eligible}
    # Each SES call is one `sent` row with its own message id: no duplicate, none lost.
    assert figures["sink_count"] == figures["sent_rows"] == figures["distinct_message_ids"] == eligible
