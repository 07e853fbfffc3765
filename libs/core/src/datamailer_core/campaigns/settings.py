"""How campaigns are snapshotted and fed to the `campaign-email` queue. Its own settings
group, read from the environment when built (never at import time)."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CampaignSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    # Recipient ids per `campaign-email` message: small, so one message is bounded work.
    batch_size: int = Field(default=50, ge=1, le=1000, validation_alias="CAMPAIGN_BATCH_SIZE")
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
