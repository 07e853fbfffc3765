"""Request and response bodies of the campaign routes (api.md, "Campaigns")."""

import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from datamailer_api.audience.schemas import NO_NUL, AwareTimestamp, Email, ScopeSlug, Slug
from datamailer_api.audience.schemas import CursorQuery as CursorQuery  # re-exported for the router
from datamailer_api.lists.schemas import MAX_LIST_KEY
from datamailer_api.transactional.schemas import SUBJECT_PATTERN, JsonObject, Text
from datamailer_core.campaigns.bulk import SendMode

MAX_TAGS = 100
MAX_SUBJECT = 255
MAX_PREVIEW_TEXT = 1000

# At most 180 characters, no `/` (it could not be addressed) and no control characters.
ExternalKey = Annotated[
    str,
    Path(
        min_length=1,
        max_length=180,
        pattern=r"^[^/\x00-\x1f\x7f]+$",
        description="The client's key for the campaign, e.g. `2026-11-newsletter`.",
    ),
]


def _addressable_key(key: str) -> str:
    """A key a client can tell apart and put in a URL: not `.` or `..` (dot segments a
    client library would resolve away), no leading or trailing whitespace (so never blank),
    no format characters (bidi controls, zero-width joiners: invisible or reordering)."""
    if key in (".", "..") or key != key.strip() or any(unicodedata.category(ch) == "Cf" for ch in key):
        raise ValueError("not a usable campaign key")
    return key


# What `PUT` accepts for a new or replaced campaign; the other routes look keys up as given.
NewExternalKey = Annotated[ExternalKey, AfterValidator(_addressable_key)]
OptionalScopeQuery = Annotated[str | None, Query(min_length=1, max_length=120, pattern=NO_NUL)]
RecipientStatus = Literal[
    "pending", "sending", "sent", "skipped", "failed", "bounced", "complained", "unsubscribed"
]

EXAMPLE: dict[str, Any] = {
    "audience": "newsletter",
    "client": "demo-app",
    "subject": "November news, {{ email }}",
    "preview_text": "What changed this month",
    "html_body": '<p>Hello!</p><p><a href="https://example.com/news">Read</a></p>'
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>',
    "text_body": "Hello!\n\nRead: https://example.com/news\n\nUnsubscribe: {{ unsubscribe_url }}",
    "from_email": "demo",
    "include_tags": ["customers"],
    "exclude_tags": ["churned"],
    "category_tag": "newsletter",
    "recipient_list_key": None,
    "scheduled_at": None,
    "metadata": {"owner": "marketing"},
}


class CampaignIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE]})

    audience: ScopeSlug = Field(description="The audience slug, in the key's organization.")
    client: ScopeSlug | None = Field(default=None, description="The client slug; must be the key's own.")
    subject: Text = Field(
        max_length=MAX_SUBJECT,
        description="Template source of the subject line.",
        json_schema_extra={"pattern": SUBJECT_PATTERN},
    )
    preview_text: Text | None = Field(default=None, max_length=MAX_PREVIEW_TEXT)
    html_body: Text | None = Field(default=None, description="Template source; html and/or text required.")
    text_body: Text | None = Field(default=None, description="Template source; html and/or text required.")
    from_email: Text | None = Field(
        default=None,
        description="A sender id of the client (not an address); default: the client's.",
        json_schema_extra={"pattern": r"^[^@\x00]*$"},
    )
    include_tags: list[Slug] = Field(default_factory=list, max_length=MAX_TAGS, description="All must match.")
    exclude_tags: list[Slug] = Field(default_factory=list, max_length=MAX_TAGS, description="Any excludes.")
    category_tag: Slug | None = Field(
        default=None, description="Contacts who disabled this category are skipped."
    )
    recipient_list_key: Text | None = Field(
        default=None,
        max_length=MAX_LIST_KEY,
        description="A recipient list of this client and audience (e.g. `course:2025`, `<all>` for "
        "every list): only active members of it or of a list under it are sent to; omitted or null, "
        "the whole audience.",
    )
    scheduled_at: AwareTimestamp | None = Field(
        default=None,
        description="Queueing before this time schedules the campaign for it; an offset or `Z` is required.",
    )
    metadata: JsonObject = Field(default_factory=dict)


class ScopeIn(BaseModel):
    """Optional body of the action routes: the scope, checked like everywhere else."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"audience": "newsletter", "client": "demo-app"}]}
    )
    audience: ScopeSlug | None = None
    client: ScopeSlug | None = None


class PreviewIn(ScopeIn):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"client": "demo-app", "context": {"first_name": "Ada"}}]},
    )
    email: Text | None = Field(default=None, max_length=320, description="Shown as the recipient.")
    context: JsonObject = Field(
        default_factory=dict, description="Extra template values (at most 32 levels deep, 64 KiB as JSON)."
    )


MAX_TEST_EMAILS = 25


class TestSendIn(ScopeIn):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"emails": ["editor@example.com"], "context": {"first_name": "Ada"}}]
        },
    )
    emails: list[Email] = Field(
        min_length=1,
        max_length=MAX_TEST_EMAILS,
        description="At most 25 addresses; no recipient rows are written.",
    )
    context: JsonObject = Field(
        default_factory=dict, description="Extra template values (at most 32 levels deep, 64 KiB as JSON)."
    )


class TestSendResult(BaseModel):
    email: str
    status: Literal["sent", "skipped", "failed"]
    message_id: str | None = Field(default=None, description="The SES message id when sent.")
    reason: str | None = Field(
        default=None,
        description="Why it was skipped (`hard_bounce`, `complaint`, `global_unsubscribe`) or failed "
        "(e.g. `MessageRejected`).",
    )


class TestSendOut(BaseModel):
    results: list[TestSendResult]


class CountersOut(BaseModel):
    recipient_count: int = Field(description="Recipient rows: every intended recipient, skipped ones too.")
    sent_count: int
    skipped_count: int
    failed_count: int
    delivered_count: int
    open_count: int = Field(description="Every open recorded, privacy-proxy and scanner fetches included.")
    unique_open_count: int = Field(description="Recipients with at least one open of any kind.")
    unique_human_open_count: int = Field(
        description="Recipients with at least one open not made by a privacy proxy (Apple Mail Privacy "
        "Protection, Gmail's image proxy...), a scanner or a prefetch right after sending."
    )
    click_count: int
    unique_click_count: int
    unsubscribe_count: int
    bounce_count: int
    complaint_count: int


class RatesOut(BaseModel):
    """Fractions (0..1, four decimals) of the recipients sent, except click-to-open
    (unique clicks over unique opens); 0 while the denominator is 0."""

    open_rate: float
    click_rate: float
    click_to_open_rate: float
    bounce_rate: float
    unsubscribe_rate: float


class ProgressOut(BaseModel):
    snapshot_completed: bool
    snapshot_percent: float = Field(description="Share of the contact id range snapshotted, 0..100.")
    snapshot_completed_at: datetime | None
    batch_count: int = Field(description="Batches of recipient ids published to the queue so far.")
    last_enqueued_at: datetime | None


class CampaignOut(BaseModel):
    id: int
    external_key: str
    audience: str
    client: str
    status: str = Field(examples=["draft"])
    paused_reason: str | None = Field(
        default=None,
        description="Why the campaign paused itself (`bounce_rate_exceeded`, `complaint_rate_exceeded`);"
        " null for an operator's pause, cleared on resume.",
    )
    subject: str
    preview_text: str | None
    html_body: str | None
    text_body: str | None
    from_email: str | None = Field(description="The sender id (the client's default when not set).")
    from_email_address: str | None
    include_tags: list[str]
    exclude_tags: list[str]
    category_tag: str | None
    recipient_list_key: str | None
    scheduled_at: datetime | None
    metadata: dict[str, Any]
    queued_at: datetime | None
    sent_at: datetime | None
    cancelled_at: datetime | None
    created_at: datetime
    updated_at: datetime
    send_mode: SendMode = Field(
        description="`bulk`: SES SendBulkEmail, 50 recipients per call; `per_recipient`: one SendEmail each"
        " (content with per-recipient template logic, or bulk sending turned off)."
    )
    send_mode_reason: str | None = Field(description="Why not in bulk; null for `bulk`.")
    counters: CountersOut
    rates: RatesOut
    progress: ProgressOut
    outcome: Literal["sent", "no_eligible_recipients", "failed"] | None = Field(
        default=None,
        description="Once the campaign is `sent` (nothing pending): `sent` when at least one "
        "recipient was sent to, `no_eligible_recipients` when every recipient was skipped (or there "
        "were none), `failed` when none was sent and some failed; null before.",
    )
    warning: str | None = Field(
        default=None,
        description="Set when the campaign reached nobody, e.g. `no eligible recipients: 3 skipped "
        "unverified` (a campaign goes to subscribed, verified contacts).",
        examples=["no eligible recipients: 3 skipped unverified"],
    )


class CampaignEnvelope(BaseModel):
    campaign: CampaignOut


class CampaignUpsertOut(CampaignEnvelope):
    created: bool


class QueueOut(CampaignEnvelope):
    """The snapshot runs in the background: right after queueing the counts are those
    written so far (0); `GET` shows them grow."""

    queued: bool = Field(description="False when the campaign had already been queued (a no-op).")
    recipient_count: int
    skipped_count: int
    batch_count: int


class PreviewOut(BaseModel):
    subject: str
    preview_text: str | None
    html_body: str | None
    text_body: str | None
    from_email: str
    from_email_address: str
    headers: dict[str, str] = Field(description="Headers added to every recipient's message.")


class RecipientOut(BaseModel):
    id: int
    contact_id: int | None
    email: str
    status: str
    skip_reason: str | None
    attempt_count: int
    sent_at: datetime | None
    delivered_at: datetime | None
    first_opened_at: datetime | None
    first_clicked_at: datetime | None
    bounced_at: datetime | None
    complained_at: datetime | None
    unsubscribed_at: datetime | None
    open_count: int
    click_count: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime


class RecipientsOut(BaseModel):
    recipients: list[RecipientOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")
