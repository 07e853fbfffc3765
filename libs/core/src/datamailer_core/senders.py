"""Sender identities: `{"id": slug, "email": "Name <a@b.c>"}`. Mail is only ever sent from
a configured sender, so everything that reaches a From header passes through here."""

import re
from email.utils import formataddr, parseaddr
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, EmailStr, TypeAdapter, ValidationError

from datamailer_core.errors import ValidationFailed
from datamailer_core.mail import parse_mailbox

if TYPE_CHECKING:
    from datamailer_core.models import Client

SENDER_ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # use with fullmatch
_EMAIL = TypeAdapter(EmailStr)


class Sender(BaseModel):
    id: str
    email: str

    @property
    def address(self) -> str:
        return parseaddr(self.email)[1]

    @property
    def display_name(self) -> str:
        return parseaddr(self.email)[0]


def normalize_sender_email(value: str) -> str | None:
    """The canonical `Name <a@b.c>` form, or None when the value is not exactly one
    mailbox (`a@b.c` or `Name <a@b.c>`) free of control characters."""
    mailbox = None if len(value) > 320 else parse_mailbox(value)
    if mailbox is None:
        return None
    try:
        _EMAIL.validate_python(mailbox.addr_spec)
    except ValidationError:
        return None
    return formataddr(mailbox) if mailbox.display_name else mailbox.addr_spec


def validate_senders(
    senders: list[dict[str, str]], default_sender_id: str | None
) -> tuple[list[dict[str, str]], str | None]:
    fields: dict[str, str] = {}
    seen: set[str] = set()
    cleaned: list[dict[str, str]] = []
    for i, sender in enumerate(senders):
        sid, email = sender.get("id", ""), sender.get("email", "")
        if not SENDER_ID_RE.fullmatch(sid):
            fields[f"senders.{i}.id"] = "invalid"
        elif sid in seen:
            fields[f"senders.{i}.id"] = "duplicate"
        seen.add(sid)
        normalized = normalize_sender_email(email)
        if normalized is None:
            fields[f"senders.{i}.email"] = "invalid"
        cleaned.append({"id": sid, "email": normalized or email})
    if default_sender_id is not None and default_sender_id not in seen:
        fields["default_sender_id"] = "not_found"
    if fields:
        raise ValidationFailed("invalid senders", fields=fields)
    if default_sender_id is None and len(cleaned) == 1:
        default_sender_id = cleaned[0]["id"]
    return cleaned, default_sender_id


def resolve_sender(client: "Client", requested: str | None, template_default: str | None) -> Sender:
    """The payload's sender id, else the template's default, else the client's. A sender
    id that is not (or no longer) configured is never used; an explicit one is an error."""
    configured = {s["id"]: Sender(id=s["id"], email=s["email"]) for s in client.sender_emails}
    if requested is not None:
        if requested not in configured:
            raise ValidationFailed(
                f"sender {requested!r} is not configured", fields={"from_email": "not_configured"}
            )
        return configured[requested]
    for candidate in (template_default, client.default_sender_id):
        if candidate is not None and candidate in configured:
            return configured[candidate]
    raise ValidationFailed("the client has no sender configured", fields={"from_email": "not_configured"})


class IdentityCheck(BaseModel):
    """What SES says about a sender's address: `verified` (may send from it; null when
    SES could not be asked) and `status` (SES's `VerificationStatus` of the address or of
    its domain, `not_found` when SES has neither, `error:<code>` when the call failed)."""

    sender_id: str
    address: str
    verified: bool | None
    status: str
    identity: str | None = None


async def check_identity(sesv2: Any, sender: dict[str, str]) -> IdentityCheck:
    """SES v2 `GetEmailIdentity` for the address, then for its domain (a verified domain
    covers every address in it). An SES failure is reported, never raised."""
    address = parseaddr(sender["email"])[1]
    for identity in (address, address.rpartition("@")[2]):
        try:
            found = await sesv2.get_email_identity(EmailIdentity=identity)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "unknown"))
            if code == "NotFoundException":
                continue
            return IdentityCheck(
                sender_id=sender["id"], address=address, verified=None, status=f"error:{code}"
            )
        except BotoCoreError as exc:
            name = type(exc).__name__
            return IdentityCheck(
                sender_id=sender["id"], address=address, verified=None, status=f"error:{name}"
            )
        status = str(found.get("VerificationStatus") or "UNKNOWN")
        return IdentityCheck(
            sender_id=sender["id"],
            address=address,
            verified=status == "SUCCESS",
            status=status,
            identity=identity,
        )
    return IdentityCheck(sender_id=sender["id"], address=address, verified=False, status="not_found")
