"""Settings grouped by concern and composed per entry point.

Every variable name is part of the operator contract (spec/runtime.md). A `.env` file in
the working directory is read when present. Nothing here is instantiated at import time.
"""

from enum import StrEnum
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOCAL_SECRET_KEY = "local-development-secret-key-change-me"


class _Group(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)


class Environment(StrEnum):
    local = "local"
    test = "test"
    staging = "staging"
    production = "production"


class DatabaseSettings(_Group):
    url: str = Field(
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/datamailer",
        validation_alias="DATABASE_URL",
    )
    pool_size: int = Field(default=5, validation_alias="DATABASE_POOL_SIZE")
    max_overflow: int = Field(default=5, validation_alias="DATABASE_MAX_OVERFLOW")
    pool_timeout: float = Field(default=10.0, validation_alias="DATABASE_POOL_TIMEOUT")
    connect_timeout: float = Field(default=5.0, validation_alias="DATABASE_CONNECT_TIMEOUT")

    @model_validator(mode="after")
    def _async_driver(self) -> Self:
        # Operators often paste a plain postgres:// URL; the services need asyncpg.
        for prefix in ("postgresql://", "postgres://"):
            if self.url.startswith(prefix):
                object.__setattr__(self, "url", "postgresql+asyncpg://" + self.url[len(prefix) :])
        return self


class AwsSettings(_Group):
    endpoint_url: str | None = Field(default=None, validation_alias="AWS_ENDPOINT_URL")
    region: str = Field(default="us-east-1", validation_alias="AWS_REGION")
    access_key_id: str | None = Field(default=None, validation_alias="AWS_ACCESS_KEY_ID")
    secret_access_key: SecretStr | None = Field(default=None, validation_alias="AWS_SECRET_ACCESS_KEY")


class QueueSettings(_Group):
    transactional_email_url: str | None = Field(
        default=None, validation_alias="SQS_TRANSACTIONAL_EMAIL_QUEUE_URL"
    )
    campaign_email_url: str | None = Field(default=None, validation_alias="SQS_CAMPAIGN_EMAIL_QUEUE_URL")
    ses_webhooks_url: str | None = Field(default=None, validation_alias="SQS_SES_WEBHOOKS_QUEUE_URL")
    email_events_url: str | None = Field(default=None, validation_alias="SQS_EMAIL_EVENTS_QUEUE_URL")
    max_receive_count: int = Field(default=5, validation_alias="SQS_MAX_RECEIVE_COUNT")

    def url_for(self, queue: str) -> str | None:
        return {
            "transactional-email": self.transactional_email_url,
            "campaign-email": self.campaign_email_url,
            "ses-webhooks": self.ses_webhooks_url,
            "email-events": self.email_events_url,
        }[queue]


class SesSettings(_Group):
    configuration_set: str | None = Field(default=None, validation_alias="SES_CONFIGURATION_SET")
    max_send_rate: float = Field(default=14.0, gt=0, validation_alias="SES_MAX_SEND_RATE")
    # `POST /webhooks/ses`: verify SNS signatures (off only for local development; the
    # tracking service refuses to start in production without it), and whether an SNS
    # SubscriptionConfirmation is confirmed by fetching its SubscribeURL (an SNS host only).
    sns_verify: bool = Field(default=True, validation_alias="SES_SNS_VERIFY")
    sns_auto_confirm: bool = Field(default=False, validation_alias="SES_SNS_AUTO_CONFIRM")


ExpiredLeasePolicy = Literal["resend", "fail"]


class DeliverySettings(_Group):
    """Workers and the sweeper: leases, the expired-lease policy per stream (spec/queues.md,
    "Idempotency"), the adaptive send-rate bounds and the sweeper's thresholds."""

    transactional_expired_lease_policy: ExpiredLeasePolicy = Field(
        default="resend", validation_alias="TRANSACTIONAL_EXPIRED_LEASE_POLICY"
    )
    campaign_expired_lease_policy: ExpiredLeasePolicy = Field(
        default="fail", validation_alias="CAMPAIGN_EXPIRED_LEASE_POLICY"
    )
    lease_seconds: float = Field(default=120.0, gt=0, validation_alias="SEND_LEASE_SECONDS")
    transactional_max_attempts: int = Field(default=10, ge=1, validation_alias="TRANSACTIONAL_MAX_ATTEMPTS")
    # A `queued` row untouched this long is assumed to have lost its queue message.
    requeue_after_seconds: float = Field(
        default=300.0, gt=0, validation_alias="TRANSACTIONAL_REQUEUE_AFTER_SECONDS"
    )
    scheduler_interval_seconds: float = Field(
        default=30.0, gt=0, validation_alias="SCHEDULER_INTERVAL_SECONDS"
    )
    worker_concurrency: int = Field(default=10, ge=1, validation_alias="WORKER_CONCURRENCY")
    # The adaptive rate never goes below this floor (per second, account-wide).
    min_send_rate: float = Field(default=1.0, gt=0, validation_alias="SES_MIN_SEND_RATE")
    # Bucket size in seconds of sending at the current rate: the largest burst allowed.
    send_burst_seconds: float = Field(default=1.0, gt=0, validation_alias="SES_SEND_BURST_SECONDS")
    # A `sending` campaign pauses itself (`paused_reason`) once, with at least
    # `campaign_rate_min_sample` sent, its hard bounces or complaints exceed this share of
    # sent: well under the 5% / 0.1% at which SES puts an account under review.
    campaign_max_bounce_rate: float = Field(
        default=0.02, ge=0, le=1, validation_alias="CAMPAIGN_MAX_BOUNCE_RATE"
    )
    campaign_max_complaint_rate: float = Field(
        default=0.0005, ge=0, le=1, validation_alias="CAMPAIGN_MAX_COMPLAINT_RATE"
    )
    campaign_rate_min_sample: int = Field(default=200, ge=1, validation_alias="CAMPAIGN_RATE_MIN_SAMPLE")
    # Campaigns whose content allows it go out through SES `SendBulkEmail` (50 per call);
    # false: one `SendEmail` per recipient (for an endpoint without SendBulkEmail).
    campaign_bulk_send: bool = Field(default=True, validation_alias="CAMPAIGN_BULK_SEND")


class TrackingSettings(_Group):
    public_base_url: str = Field(default="http://localhost:8001", validation_alias="PUBLIC_BASE_URL")
    # An address whose mail unsubscribes, offered in `List-Unsubscribe` next to the https
    # link (`<mailto:...>`); unset: the https link only.
    list_unsubscribe_mailto: str | None = Field(
        default=None, pattern=r"^[^\s<>,?@]+@[^\s<>,?@]+$", validation_alias="LIST_UNSUBSCRIBE_MAILTO"
    )
    # Where the tracking service publishes its events from: `process`, a child process fed
    # through a pipe (the serving process keeps its CPU for answering); `inline`, the
    # serving process itself.
    event_publisher: Literal["process", "inline"] = Field(
        default="process", validation_alias="TRACKING_EVENT_PUBLISHER"
    )


class SecuritySettings(_Group):
    secret_key: SecretStr = Field(default=SecretStr(LOCAL_SECRET_KEY), validation_alias="SECRET_KEY")


class MailchimpSettings(_Group):
    # Unset: `https://<dc>.api.mailchimp.com/3.0` from each client's API key.
    base_url: str | None = Field(default=None, validation_alias="MAILCHIMP_BASE_URL")
    timeout_seconds: float = Field(default=10.0, gt=0, validation_alias="MAILCHIMP_TIMEOUT_SECONDS")


class LogSettings(_Group):
    level: str = Field(default="INFO", validation_alias="LOG_LEVEL")
    format: str = Field(default="console", pattern="^(json|console)$", validation_alias="LOG_FORMAT")
    # Set (e.g. `production`): the scheduler publishes the health figures the stack's
    # alarms read (namespace `Datamailer`, dimension `Environment`) to CloudWatch.
    cloudwatch_environment: str | None = Field(
        default=None, validation_alias="CLOUDWATCH_METRICS_ENVIRONMENT"
    )
    # A `sending` campaign fed nothing for this long counts as stuck.
    stuck_campaign_seconds: float = Field(default=900.0, gt=0, validation_alias="STUCK_CAMPAIGN_SECONDS")


def group_env(group: BaseSettings) -> dict[str, str | None]:
    """A group's values as the environment variables that set them (None: unset), to
    hand a child process the configuration this process was given."""
    env: dict[str, str | None] = {}
    for name, field in type(group).model_fields.items():
        alias = field.validation_alias
        assert isinstance(alias, str), name
        value = getattr(group, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[alias] = None if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return env


class Settings(_Group):
    environment: Environment = Field(default=Environment.local, validation_alias="DATAMAILER_ENV")
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    aws: AwsSettings = Field(default_factory=AwsSettings)
    queues: QueueSettings = Field(default_factory=QueueSettings)
    ses: SesSettings = Field(default_factory=SesSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    log: LogSettings = Field(default_factory=LogSettings)
    mailchimp: MailchimpSettings = Field(default_factory=MailchimpSettings)

    @model_validator(mode="after")
    def _refuse_default_secret(self) -> Self:
        local = self.environment in (Environment.local, Environment.test)
        if not local and self.security.secret_key.get_secret_value() == LOCAL_SECRET_KEY:
            raise ValueError("SECRET_KEY must be set outside local mode")
        return self
