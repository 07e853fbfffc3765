"""How campaigns are snapshotted and fed to the `campaign-email` queue. Its own settings
group, read from the environment when built (never at import time)."""

from typing import Final

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_AUTO_BATCH: Final = 50
MAX_AUTO_BATCH: Final = 500
# An automatic batch is about this long at the maximum send rate: well inside the queue's
# visibility timeout at a low rate, and at a high one few enough messages, claims and
# counter updates per recipient that they stop costing more than the sending.
AUTO_BATCH_SECONDS: Final = 2.0


class CampaignSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    # Recipient ids per `campaign-email` message, so one message is bounded work. Unset:
    # `for_send_rate` sizes it to the account's rate.
    batch_size: int = Field(default=MIN_AUTO_BATCH, ge=1, le=1000, validation_alias="CAMPAIGN_BATCH_SIZE")
    # Batches handed to the queue and not yet worked off, per campaign: the queue depth a
    # campaign can cause, whatever its size, and the most a pause lets through.
    max_batches_in_flight: int = Field(
        default=100, ge=1, le=10_000, validation_alias="CAMPAIGN_MAX_BATCHES_IN_FLIGHT"
    )
    # Contact ids per snapshot statement: one short transaction each.
    snapshot_chunk: int = Field(default=50_000, ge=1, validation_alias="CAMPAIGN_SNAPSHOT_CHUNK")
    # The scheduler runs the campaign jobs this often; one run keeps feeding active
    # campaigns for up to `job_budget_seconds` (0: a single pass).
    job_interval_seconds: float = Field(default=1.0, gt=0, validation_alias="CAMPAIGN_JOB_INTERVAL_SECONDS")
    job_budget_seconds: float = Field(default=10.0, ge=0, validation_alias="CAMPAIGN_JOB_BUDGET_SECONDS")
    # Recipients handed to the queue that are still pending after this long, with nothing
    # else fed meanwhile, are assumed lost (e.g. a message sent to the DLQ) and fed again;
    # the handler's claim makes a duplicate harmless.
    refeed_after_seconds: float = Field(default=600.0, gt=0, validation_alias="CAMPAIGN_REFEED_AFTER_SECONDS")

    def for_send_rate(self, max_send_rate: float) -> "CampaignSettings":
        """With CAMPAIGN_BATCH_SIZE unset, batches of about `AUTO_BATCH_SECONDS` of
        sending at `max_send_rate`, between 50 and 500 recipients (SendBulkEmail takes 50
        per call: a batch of 500 is ten calls at once)."""
        if "batch_size" in self.model_fields_set:
            return self
        size = int(min(MAX_AUTO_BATCH, max(MIN_AUTO_BATCH, max_send_rate * AUTO_BATCH_SECONDS)))
        return self.model_copy(update={"batch_size": size})
