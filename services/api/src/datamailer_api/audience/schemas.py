from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from datamailer_core.errors import ValidationFailed
from datamailer_core.repositories.audience_queries import MAX_ID
from datamailer_core.slugs import slugify

SubscriptionStatus = Literal["pending", "subscribed", "unsubscribed"]
ValidationStatus = Literal[
    "unknown",
    "valid",
    "invalid_syntax",
    "no_mx",
    "disposable",
    "risky",
    "manually_invalid",
    "externally_validated",
]
MAX_SLUG = 64
MAX_TAG_NAME = 255
# PostgreSQL text cannot hold NUL: such input is invalid, never a database error.
NO_NUL = r"^[^\x00]*$"
# Query values echoed back or compared as text: no control characters at all.
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"


def to_slug(name: str) -> str:
    """A tag name as its slug (`Weekly News` → `weekly-news`): `invalid` when nothing is
    left of it, `too_long` over 64 characters once slugified."""
    slug = slugify(name)
    if not slug:
        raise PydanticCustomError("invalid", "no letter or digit to make a slug of")
    if len(slug) > MAX_SLUG:
        raise PydanticCustomError("too_long", "longer than {limit} characters as a slug", {"limit": MAX_SLUG})
    return slug


def slug_list(raw: str | None, field_name: str) -> list[str]:
    """A query string's comma-separated tag names as their slugs, in order, once each;
    any name that does not make a slug is a field error."""
    slugs: list[str] = []
    for name in (raw or "").split(","):
        if not name.strip():
            continue
        if len(name) > MAX_TAG_NAME or "\x00" in name or not 0 < len(slug := slugify(name)) <= MAX_SLUG:
            raise ValidationFailed("a tag name does not make a slug", fields={field_name: "invalid"})
        if slug not in slugs:
            slugs.append(slug)
    return slugs


# Every tag that enters the API (contact tags, filters, campaign tags, categories) is
# stored and matched as its slug, made the way Django's slugify makes it.
Slug = Annotated[
    str,
    StringConstraints(max_length=MAX_TAG_NAME, pattern=NO_NUL),
    AfterValidator(to_slug),
    Field(
        json_schema_extra={"minLength": 1},
        description="A tag name, used as its slug (Django's slugify: `Weekly News` → `weekly-news`); "
        "a name with no letter or digit is `invalid`, a slug over 64 characters `too_long`.",
    ),
]


def _any_case(word: str) -> str:
    return "".join(f"[{ch.upper()}{ch}]" for ch in word)


# What `clean_email` accepts, as far as JSON Schema can say it: one bare address of at
# most 254 characters whose top-level domain is not special-use (RFC 6761).
SPECIAL_USE_TLDS = ("arpa", "invalid", "local", "localhost", "onion", "test")
EMAIL_SCHEMA = {
    "type": "string",
    "format": "email",
    "maxLength": 254,
    # A dotted domain whose last label is not all digits; no display name, list or space
    # (`,;<>`), edge whitespace aside (trimmed).
    "pattern": rf"^(?![\s\S]*(?:[.@](?:{'|'.join(map(_any_case, SPECIAL_USE_TLDS))})|\.[0-9]*)\s*$)"
    r"\s*[^\s,;<>@\x00]+@[^\s,;<>@\x00]+\.[^\s,;<>@\x00]+\s*$",
    "description": "One bare address (`ada@example.com`); a special-use top-level domain "
    f"({', '.join(SPECIAL_USE_TLDS)}) is invalid.",
}
Email = Annotated[str, StringConstraints(max_length=320), WithJsonSchema(EMAIL_SCHEMA)]
EmailQuery = Annotated[str, Query(max_length=320, pattern=NO_CONTROL), WithJsonSchema(EMAIL_SCHEMA)]
# An opaque page token from `next_cursor` (URL-safe base64); any other is `cursor: invalid`.
CursorQuery = Annotated[str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_-]*$")]
Reason = Annotated[str, StringConstraints(max_length=500, pattern=NO_NUL)]
ScopeSlug = Annotated[str, StringConstraints(min_length=1, max_length=120, pattern=NO_NUL)]
ScopeQuery = Annotated[str, Query(min_length=1, max_length=120, pattern=NO_NUL)]
OptionalScopeQuery = Annotated[str | None, Query(min_length=1, max_length=120, pattern=NO_NUL)]
ContactId = Annotated[int, Path(ge=1, le=MAX_ID)]


def _storable(value: datetime) -> datetime:
    """Naive times are UTC; a time outside the representable range once in UTC (year 1
    at +14:00) is invalid input rather than a database error."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range") from None


Timestamp = Annotated[datetime, AfterValidator(_storable)]
# A time that must carry its offset (`timezone_required` otherwise), e.g. a schedule.
AwareTimestamp = Annotated[AwareDatetime, AfterValidator(_storable)]

EXAMPLE = {"email": "alice@example.com", "audience": "newsletter", "client": "web"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Scoped(Strict):
    audience: ScopeSlug
    # Optional as in Datamailer's clients: an API key belongs to one client, so an omitted
    # `client` is the key's own (a named one must still be it).
    client: ScopeSlug | None = None


class EmailValidationIn(Strict):
    status: ValidationStatus
    reason: Reason | None = None
    validated_at: Timestamp | None = None


class SuppressionFlags(Strict):
    global_unsubscribed: StrictBool | None = None
    hard_bounced: StrictBool | None = None
    complained: StrictBool | None = None


class ImportItem(Strict):
    email: Email
    status: SubscriptionStatus | None = None
    tags: list[Slug] = Field(default_factory=list, max_length=100)
    verified: StrictBool | None = None
    email_validation: EmailValidationIn | None = None
    suppression: SuppressionFlags | None = None


class ContactUpsertIn(Scoped, ImportItem):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{**EXAMPLE, "status": "subscribed", "tags": ["python"], "verified": True}]
        },
    )


class ImportIn(Scoped):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{**EXAMPLE, "contacts": [{"email": "bob@example.com"}]}]},
    )
    contacts: list[dict[str, Any]] = Field(max_length=10_000)
    dry_run: StrictBool = False


class ValidationOut(BaseModel):
    status: str
    reason: str | None
    validated_at: datetime | None


class SubscriptionOut(BaseModel):
    slug: str
    subscribed: bool
    status: str | None
    verified: bool
    verified_at: datetime | None
    unsubscribed_at: datetime | None
    unsubscribe_reason: str | None


class ContactStatus(BaseModel):
    contact_id: int | None
    email: str
    exists: bool
    verified: bool
    verified_at: datetime | None
    email_validation: ValidationOut
    global_unsubscribed: bool
    hard_bounced: bool
    complained: bool
    audience: SubscriptionOut
    client: SubscriptionOut
    can_send_marketing: bool
    can_send_transactional: bool


class ContactOut(ContactStatus):
    tags: list[str]


class VerificationIn(Strict):
    verified: StrictBool
    verified_at: Timestamp | None = None
    audience: ScopeSlug | None = None
    client: ScopeSlug | None = None


class ValidationPatchIn(Strict):
    status: ValidationStatus
    reason: Reason | None = None
    validated_at: Timestamp | None = None
    audience: ScopeSlug | None = None
    client: ScopeSlug | None = None


class SuppressionPatchIn(SuppressionFlags):
    reason: Reason | None = None
    audience: ScopeSlug | None = None
    client: ScopeSlug | None = None


class TagsIn(Strict):
    tags: list[Slug] = Field(max_length=100)
    audience: ScopeSlug | None = None
    client: ScopeSlug | None = None


class SubscribeIn(ContactUpsertIn):
    pass


class UnsubscribeIn(Scoped):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{**EXAMPLE, "scope": "client"}]}
    )
    email: Email
    scope: Literal["client", "audience", "global"] = "client"
    reason: Reason | None = None


class CategoryIn(Strict):
    tag: Slug
    enabled: StrictBool
    label: Annotated[str, StringConstraints(max_length=200, pattern=NO_NUL)] | None = None


class PreferencesIn(Scoped):
    email: Email
    categories: list[CategoryIn] = Field(max_length=100)
    reason: Reason | None = None


class CategoryOut(BaseModel):
    tag: str
    enabled: bool
    label: str | None


class PreferencesOut(BaseModel):
    email: str
    exists: bool
    categories: list[CategoryOut]


class EraseIn(Scoped):
    email: Email


class EraseOut(BaseModel):
    erased: bool
    suppressed: bool


class HistoryItem(BaseModel):
    kind: str
    id: int
    created_at: datetime
    type: str
    status: str | None
    subject: str | None
    campaign_id: int | None
    transactional_message_id: int | None
    url: str | None
    metadata: dict[str, Any] | None


class HistoryOut(BaseModel):
    items: list[HistoryItem]
    next_cursor: str | None


class ContactListOut(BaseModel):
    contacts: list[ContactOut]
    next_cursor: str | None


class ImportCounts(BaseModel):
    total: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    invalid: int = 0


class ImportError_(BaseModel):
    index: int | None = None
    row: int | None = None
    email: str | None = None
    code: str
    fields: dict[str, str] = Field(default_factory=dict)


class ImportOut(BaseModel):
    dry_run: bool
    counts: ImportCounts
    errors: list[ImportError_]
    errors_truncated: bool = False
