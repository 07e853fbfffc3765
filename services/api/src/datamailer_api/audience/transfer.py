"""Bulk audience transfer: JSON and CSV imports, the contact listing and the CSV export.

The CSV import streams: the upload is spooled to disk by the multipart parser, checked
once in full (UTF-8, parseable CSV) and for its header, then read row by row and written in
set-based batches, each in its own short transaction. The export streams from a server-side cursor."""

import csv
import io
from collections.abc import AsyncIterator
from datetime import datetime
from types import SimpleNamespace
from typing import IO, Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.datastructures import FormData
from starlette.datastructures import UploadFile as StarletteUpload

from datamailer_api.audience import service
from datamailer_api.audience.schemas import (
    ContactListOut,
    ContactOut,
    CursorQuery,
    ImportIn,
    ImportOut,
    OptionalScopeQuery,
    ScopeQuery,
    SubscriptionStatus,
    Timestamp,
    slug_list,
)
from datamailer_api.deps import CurrentClient
from datamailer_core.errors import UnsupportedMediaType, ValidationFailed
from datamailer_core.models import Contact
from datamailer_core.repositories import audience_queries as queries
from datamailer_core.repositories.audience import ContactInput
from datamailer_web.app import SessionDep
from datamailer_web.errors import error_responses

router = APIRouter(
    prefix="/api", tags=["import and export"], responses=error_responses(400, 401, 403, 413, 415)
)
BATCH_SIZE = 2000
CSV_IMPORT_PATH = "/api/contacts/imports/csv"
CSV_IMPORT_LIMIT = 512 * 1024 * 1024
EXPORT_COLUMNS = (
    "email",
    "audience",
    "client",
    "tags",
    "subscription_status",
    "verified",
    "verified_at",
    "email_validation_status",
    "email_validation_reason",
    "email_validated_at",
    "global_unsubscribed",
    "hard_bounced",
    "complained",
    "unsubscribed",
    "unsubscribed_at",
    "unsubscribe_reason",
    "updated_at",
)
_TRUE, _FALSE = {"true", "1", "yes", "y", "t"}, {"false", "0", "no", "n", "f"}


@router.post("/contacts/imports", response_model=ImportOut)
async def import_json(body: ImportIn, auth: CurrentClient, session: SessionDep) -> ImportOut:
    """Apply valid items, report invalid ones by 1-based `index`; duplicates are skipped."""
    scope = await service.resolve_scope(session, auth, body.audience, body.client)
    run = service.ImportRun(scope, body.dry_run)
    batch: list[ContactInput] = []
    for index, raw in enumerate(body.contacts, start=1):
        item = run.accept({"index": index}, raw, "import")
        if item is not None:
            batch.append(item)
    for start in range(0, len(batch), BATCH_SIZE):
        await run.apply(session, batch[start : start + BATCH_SIZE])
    return ImportOut(
        dry_run=body.dry_run, counts=run.counts, errors=run.errors, errors_truncated=run.errors_truncated
    )


def _flag(value: str | None, column: str, fields: dict[str, str]) -> bool | None:
    """A CSV boolean; blank means "leave as it is", never "clear"."""
    text = (value or "").strip().lower()
    if not text:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    fields[column] = "invalid"
    return None


def _row_item(row: dict[str, str | None]) -> tuple[dict[str, Any], dict[str, str]]:
    """A CSV row as an import item (the export's columns are accepted back)."""
    fields: dict[str, str] = {}

    def get(name: str) -> str:
        return (row.get(name) or "").strip()

    item: dict[str, Any] = {"email": get("email")}
    status = get("status") or get("subscription_status")
    if status:
        item["status"] = status
    tags = get("tags").replace(";", ",").replace("|", ",")
    item["tags"] = [t.strip() for t in tags.split(",") if t.strip()]
    verified = _flag(row.get("verified"), "verified", fields)
    if verified is not None:
        item["verified"] = verified
    if validation := get("email_validation_status"):
        item["email_validation"] = {
            "status": validation,
            "reason": get("email_validation_reason") or None,
            "validated_at": get("email_validated_at") or None,
        }
    suppression = {
        name: flag
        for name in ("global_unsubscribed", "hard_bounced", "complained")
        if (flag := _flag(row.get(name), name, fields)) is True  # blank or false never weakens suppression
    }
    if suppression:
        item["suppression"] = suppression
    return item, fields


def _text_stream(upload: IO[bytes]) -> io.TextIOWrapper:
    upload.seek(0)
    return io.TextIOWrapper(upload, encoding="utf-8-sig", newline="", errors="strict")


def _check_csv(upload: IO[bytes]) -> None:
    """Read the whole spooled file once before any write: it must be UTF-8 that the csv
    module parses (no field over its size limit, no broken quoting), so a bad file is
    rejected whole rather than half imported. Rows are parsed and dropped: memory stays flat."""
    stream = _text_stream(upload)
    reader = csv.reader(stream)
    try:
        for _ in reader:
            pass
    except UnicodeDecodeError:
        raise ValidationFailed("the file is not UTF-8", fields={"csv": "must_be_utf8"}) from None
    except csv.Error as exc:
        raise ValidationFailed(f"line {reader.line_num}: {exc}", fields={"csv": "invalid"}) from None
    finally:
        stream.detach()  # a collected wrapper would close the upload under the second pass


@router.post(
    CSV_IMPORT_PATH.removeprefix("/api"),
    response_model=ImportOut,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "audience"],
                        "maxProperties": 11,  # the file and at most 10 form fields
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "audience": {"type": "string", "minLength": 1, "maxLength": 120},
                            "client": {"type": "string", "minLength": 1, "maxLength": 120},
                            "dry_run": {"type": "boolean"},
                        },
                    }
                }
            },
        }
    },
)
async def import_csv(request: Request, auth: CurrentClient, session: SessionDep) -> ImportOut:
    """A multipart upload (field `file`, UTF-8 with or without BOM) with the form fields
    `audience`, `client` and `dry_run`; rows are numbered from 2 (the header is row 1)."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType("send multipart/form-data", fields={"body": "unsupported_media_type"})
    form = await request.form(max_files=1, max_fields=10)
    try:
        return await _import_form(form, auth, session)
    finally:
        await form.close()  # the spooled upload is deleted now, not at garbage collection


def _dry_run(value: object) -> bool:
    """The form field `dry_run`: absent or blank is false, else a CSV boolean (`true`,
    `false`, `1`, `0`, `yes`, `no`, `y`, `n`, `t`, `f`, any case); anything else is 400."""
    fields: dict[str, str] = {}
    flag = _flag(value if isinstance(value, str) else "?", "dry_run", fields) if value is not None else None
    if fields:
        raise ValidationFailed("dry_run must be a boolean", fields=fields)
    return bool(flag)


async def _import_form(form: FormData, auth: CurrentClient, session: SessionDep) -> ImportOut:
    audience, client = form.get("audience"), form.get("client")
    if not isinstance(audience, str) or not audience:
        raise ValidationFailed("name the audience", fields={"audience": "required"})
    scope = await service.resolve_scope(session, auth, audience, client if isinstance(client, str) else None)
    dry_run = _dry_run(form.get("dry_run"))
    upload = form.get("file")
    if not isinstance(upload, StarletteUpload):
        raise ValidationFailed("upload a CSV file in the field `file`", fields={"csv": "required"})
    _check_csv(upload.file)
    reader = csv.DictReader(_text_stream(upload.file))
    if not reader.fieldnames or "email" not in [f.strip().lower() for f in reader.fieldnames]:
        raise ValidationFailed(
            "the first line must be a header with an email column", fields={"csv": "missing_header"}
        )
    reader.fieldnames = [f.strip().lower() for f in reader.fieldnames]
    run = service.ImportRun(scope, dry_run)
    batch: list[ContactInput] = []
    for number, row in enumerate(reader, start=2):
        item, fields = _row_item(row)
        if fields:
            run.counts.total += 1
            run.counts.invalid += 1
            run.error({"row": number}, "invalid", item.get("email") or None, fields)
            continue
        accepted = run.accept({"row": number}, item, "import")
        if accepted is not None:
            batch.append(accepted)
        if len(batch) >= BATCH_SIZE:
            await run.apply(session, batch)
            batch = []
    await run.apply(session, batch)
    return ImportOut(
        dry_run=dry_run, counts=run.counts, errors=run.errors, errors_truncated=run.errors_truncated
    )


FilterQuery = Annotated[str | None, Query(max_length=2000)]
SuppressionFilter = Literal["none", "any", "global_unsubscribed", "hard_bounced", "complained"]


async def contact_filters(
    audience: ScopeQuery,
    auth: CurrentClient,
    session: SessionDep,
    client: OptionalScopeQuery = None,
    tags: FilterQuery = None,
    subscription_status: SubscriptionStatus | None = None,
    verified: bool | None = None,
    suppression: SuppressionFilter | None = None,
    updated_since: Timestamp | None = None,
) -> tuple[service.ContactScope, queries.ContactFilters]:
    """The filters the listing and the export share, within the caller's scope."""
    scope = await service.resolve_scope(session, auth, audience, client)
    tag_filter = tuple(slug_list(tags, "tags"))
    filters = queries.ContactFilters(
        audience_id=scope.audience.id,
        client_id=scope.client_id,
        tags=tag_filter,
        subscription_status=subscription_status,
        verified=verified,
        suppression=suppression,
        updated_since=updated_since,
    )
    return scope, filters


Filtered = Annotated[tuple[service.ContactScope, queries.ContactFilters], Depends(contact_filters)]


@router.get("/contacts", response_model=ContactListOut)
async def list_contacts(
    filtered: Filtered,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: CursorQuery = None,
) -> ContactListOut:
    """The client's contacts in an audience, oldest first, with cursor pagination."""
    scope, filters = filtered
    stmt = queries.contacts_query(filters)
    if cursor:
        (after,) = queries.decode_cursor(cursor, 1)
        stmt = stmt.where(Contact.id > queries.cursor_id(after))
    rows = (await session.execute(stmt.limit(limit + 1))).all()
    contacts = [_contact_row(scope, row) for row in rows[:limit]]
    next_cursor = queries.encode_cursor(rows[limit - 1][0].id) if len(rows) > limit else None
    return ContactListOut(contacts=contacts, next_cursor=next_cursor)


def _contact_row(scope: service.ContactScope, row: Any) -> ContactOut:
    contact, client_sub, audience_status, audience_verified_at, tags = row
    audience_sub = None
    if audience_status is not None:
        audience_sub = SimpleNamespace(
            status=audience_status,
            verified_at=audience_verified_at,
            unsubscribed_at=None,
            unsubscribe_reason=None,
        )
    payload = service.status_payload(scope, contact.email, contact, client_sub, audience_sub)
    return ContactOut(**payload.model_dump(), tags=[t for t in tags.split(",") if t])


def _csv_line(values: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(["" if v is None else v for v in values])
    return buffer.getvalue()


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value else ""


@router.get("/contacts.csv", response_class=StreamingResponse, responses={200: {"content": {"text/csv": {}}}})
async def export_csv(filtered: Filtered, session: SessionDep) -> StreamingResponse:
    """Every matching contact as CSV, streamed (no row cap)."""
    scope, filters = filtered

    async def lines() -> AsyncIterator[str]:
        yield _csv_line(list(EXPORT_COLUMNS))
        async for contact, sub, _status, _verified_at, tag_list in queries.stream_contacts(session, filters):
            verified_at = contact.verified_at or sub.verified_at
            yield _csv_line(
                [
                    contact.email,
                    scope.audience.slug,
                    scope.client_slug,
                    tag_list,
                    sub.status,
                    str(verified_at is not None).lower(),
                    _iso(verified_at),
                    contact.validation_status,
                    contact.validation_reason,
                    _iso(contact.validated_at),
                    str(contact.global_unsubscribed_at is not None).lower(),
                    str(contact.hard_bounced_at is not None).lower(),
                    str(contact.complained_at is not None).lower(),
                    str(sub.status == "unsubscribed").lower(),
                    _iso(sub.unsubscribed_at),
                    sub.unsubscribe_reason,
                    _iso(max(contact.updated_at, sub.updated_at)),
                ]
            )

    headers = {"Content-Disposition": f'attachment; filename="contacts-{scope.audience.slug}.csv"'}
    return StreamingResponse(lines(), media_type="text/csv; charset=utf-8", headers=headers)
