"""Request and response bodies of the recipient-list routes (Datamailer's documented
shapes: the scope, an optional `list` object, one `member` or a `members` array)."""

import builtins
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints, model_validator

from datamailer_api.audience.schemas import NO_CONTROL, Email, Scoped, Slug, Strict
from datamailer_api.transactional.schemas import SENDER_ID_PATTERN, JsonObject, Text

MAX_MEMBERS = 100_000
MAX_LIST_KEY = 255
MAX_SEGMENTS = 16
MAX_SOURCE_KEY = 255
MemberStatus = Literal["active", "removed"]
Label = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=NO_CONTROL)]
ListType = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_CONTROL)]
SourceKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_SOURCE_KEY, pattern=NO_CONTROL)]

EXAMPLE_SCOPE: dict[str, Any] = {"audience": "dtc-courses", "client": "dtc-courses"}
EXAMPLE_LIST: dict[str, Any] = {
    "type": "homework_submitters",
    "name": "ML Zoomcamp 2026 Homework 1 submitters",
}


class ListAttributes(Strict):
    """Omitted attributes keep their value."""

    type: ListType | None = None
    name: Label | None = None
    metadata: JsonObject | None = None


class ListPutIn(Scoped, ListAttributes):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{**EXAMPLE_SCOPE, **EXAMPLE_LIST}]}
    )


class MemberIn(Strict):
    """A member's whole state: an omitted `metadata` is `{}`."""

    email: Email
    status: MemberStatus = "active"
    metadata: JsonObject = Field(default_factory=dict)


class MemberPutIn(Scoped):
    """Datamailer's shape nests the member (`member: {...}`); a flat `email`, `status`,
    `metadata` is accepted too."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{**EXAMPLE_SCOPE, "list": EXAMPLE_LIST, "member": {"email": "learner@example.com"}}]
        },
    )
    list: ListAttributes | None = None
    member: MemberIn | None = None
    email: Email | None = None
    status: MemberStatus | None = None
    metadata: JsonObject | None = None

    @model_validator(mode="after")
    def _one_member(self) -> "MemberPutIn":
        if self.member is None and self.email is None:
            raise ValueError("send `member` (or a flat `email`)")
        if self.member is not None and (self.email, self.status, self.metadata) != (None, None, None):
            raise ValueError("send either `member` or flat member fields, not both")
        return self

    def the_member(self) -> MemberIn:
        if self.member is not None:
            return self.member
        assert self.email is not None
        return MemberIn(email=self.email, status=self.status or "active", metadata=self.metadata or {})


class BulkMemberIn(MemberIn):
    source_object_key: SourceKey


class BulkIn(Scoped):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    **EXAMPLE_SCOPE,
                    "list": EXAMPLE_LIST,
                    "members": [{"source_object_key": "registration:1", "email": "one@example.com"}],
                }
            ]
        },
    )
    list: ListAttributes | None = None
    members: builtins.list[BulkMemberIn] = Field(max_length=MAX_MEMBERS)


class ReconcileIn(BulkIn):
    remove_absent: StrictBool = False


class ListOut(BaseModel):
    list_key: str
    audience: str
    client: str
    type: str | None
    name: str | None
    metadata: dict[str, Any]
    parent_key: str | None = Field(description="`<all>` for a top-level list; null for `<all>` itself.")
    member_count: int = Field(description="Distinct active contacts of this list and every list under it.")
    direct_member_count: int
    removed_member_count: int
    created: bool = False
    created_at: datetime | None
    updated_at: datetime | None


class MemberOut(BaseModel):
    source_object_key: str
    contact_id: int
    email: str
    status: str
    metadata: dict[str, Any]
    removed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class MemberPutOut(BaseModel):
    list: ListOut
    member: MemberOut
    outcome: Literal["created", "updated", "unchanged"]


class MemberCounts(BaseModel):
    total: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0


class BulkOut(BaseModel):
    list: ListOut
    counts: MemberCounts


class ListSendIn(Scoped):
    """A transactional send to every active member of the list and the lists under it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    **EXAMPLE_SCOPE,
                    "template_key": "homework-score-notification",
                    "idempotency_key": "homework-score:ml-zoomcamp-2026:homework-1",
                    "context": {"course_title": "ML Zoomcamp 2026", "homework_title": "Homework 1"},
                    "metadata": {"source": "course-management-platform"},
                }
            ]
        },
    )
    template_key: Text = Field(min_length=1, max_length=180)
    idempotency_key: Text = Field(
        min_length=1,
        max_length=200,
        description="Required. Each member's message key is this plus `:contact-<id>`, so a repeat "
        "sends nothing new.",
    )
    context: JsonObject = Field(default_factory=dict)
    metadata: JsonObject = Field(default_factory=dict)
    from_email: Text | None = Field(
        default=None,
        description="A sender id (not an address).",
        json_schema_extra={"pattern": SENDER_ID_PATTERN},
    )
    category_tag: Slug | None = None


class ListSendCounts(BaseModel):
    members: int = Field(description="Distinct active members sent to (at most 10,000 per call).")
    created: int = Field(description="Messages this request created; 0 on a repeat.")
    queued: int
    skipped: int
    enqueued: int = Field(description="Messages this request put on the queue.")


class ListSendSkipped(BaseModel):
    contact_id: int | None
    email: str
    message_id: int
    reason: str = Field(examples=["hard_bounce"])


class ListSendOut(BaseModel):
    list_key: str
    template_key: str
    idempotency_key: str
    idempotent_replay: bool = Field(
        description="True when every member's message already existed (false for no members)."
    )
    counts: ListSendCounts
    skipped: builtins.list[ListSendSkipped]
