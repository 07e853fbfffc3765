"""Building the outgoing message for SES v2 `SendEmail`.

`Simple` content when the message is only From/To/Subject/bodies/Reply-To; `Raw` MIME
(written here, see `_raw_mime`) when custom headers, Cc or Bcc are present. Everything that becomes a
header is checked here, whatever the caller validated before: no control character in any
header (`has_control`), exactly one mailbox per address field (`parse_mailbox`), reserved
header names refused. Campaign sending reuses
this with `List-Unsubscribe`/`List-Unsubscribe-Post` in `headers`.
"""

import base64
import functools
import itertools
import re
import secrets
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.header import Header
from email.headerregistry import Address
from email.utils import formataddr, formatdate
from typing import Any, NamedTuple

from datamailer_core.errors import DatamailerError

HEADER_NAME_RE = re.compile(r"[A-Za-z0-9-]{1,80}")  # use with fullmatch
RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "content-type",
        "content-transfer-encoding",
        "mime-version",
        "date",
        "message-id",
        "sender",
        "return-path",
    }
)
MAX_HEADERS = 50
MAX_HEADER_VALUE = 998
# SES message tag names and values: ASCII letters, digits, `_` and `-`, at most 256.
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
# Format characters that scripts and emoji sequences need (zero-width non-joiner, joiner).
_ALLOWED_FORMAT = frozenset("\u200c\u200d")
CRLF = "\r\n"


class InvalidMessage(DatamailerError):
    """The stored message cannot become a safe email; `reason` is short and stable."""

    code = "invalid_message"

    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = reason
        super().__init__(message or reason)


@dataclass(frozen=True)
class OutgoingEmail:
    """One message to one set of recipients. `from_address` may carry a display name
    (`Support <support@example.com>`); `display_name`, when given, replaces it."""

    from_address: str
    to: Sequence[str]
    subject: str
    html_body: str | None = None
    text_body: str | None = None
    display_name: str | None = None
    reply_to: Sequence[str] = ()
    cc: Sequence[str] = ()
    bcc: Sequence[str] = ()
    headers: Mapping[str, str] = field(default_factory=dict)


class Mailbox(NamedTuple):
    display_name: str
    addr_spec: str


def _is_control(ch: str) -> bool:
    category = unicodedata.category(ch)
    return category in ("Cc", "Zl", "Zp") or (category == "Cf" and ch not in _ALLOWED_FORMAT)


def has_control(value: str) -> bool:
    """Whether `value` holds a control character (tab, CR, LF, VT, FF, NEL, ...), a line or
    paragraph separator, or a format character other than ZWNJ/ZWJ: none may reach a
    header, which is one line of text."""
    if value.isprintable():  # false for every such character (and for a few harmless ones)
        return False
    return value.isascii() or any(_is_control(ch) for ch in value)


def one_line(value: str) -> str:
    """`value` with each run of control characters replaced by a space, trimmed."""
    if has_control(value):
        value = "".join(
            " " if control else "".join(run) for control, run in itertools.groupby(value, _is_control)
        )
    return value.strip()


# A bare ASCII dot-atom address (most recipients): accepted without the slow parser.
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
)
# One mailbox and nothing else: `addr@domain`, or `Display Name <addr@domain>` with the
# name bare (no specials) or quoted. Anything around or after it is refused, not dropped.
_ADDR_SPEC = r'[^\s<>"(),;:\\\[\]@]+@[^\s<>"(),;:\\\[\]@]+'
_MAILBOX = re.compile(
    rf"(?P<bare>{_ADDR_SPEC})"
    rf'|(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<phrase>[^"<>()\[\]\\,;:@]*?))\s*<(?P<addr>{_ADDR_SPEC})>'
)
_QUOTED_PAIR = re.compile(r"\\(.)")


def parse_mailbox(value: str) -> Mailbox | None:
    """The one mailbox `value` is (surrounding spaces aside), or None."""
    if has_control(value):
        return None
    match = _MAILBOX.fullmatch(value.strip())
    if match is None:
        return None
    if match["bare"] is not None:
        name, addr = "", match["bare"]
    elif match["quoted"] is not None:
        name, addr = _QUOTED_PAIR.sub(r"\1", match["quoted"]), match["addr"]
    else:
        name, addr = match["phrase"].strip(), match["addr"]
    local, _, domain = addr.rpartition("@")
    try:
        parsed = Address(display_name=name, username=local, domain=domain)
    except ValueError:
        return None
    return Mailbox(parsed.display_name, parsed.addr_spec)


@functools.lru_cache(maxsize=1024)  # senders repeat for every message of a campaign
def _address(value: str, what: str) -> Mailbox:
    if _PLAIN_ADDRESS.fullmatch(value):  # fullmatch: no trailing newline either
        return Mailbox("", value)
    mailbox = parse_mailbox(value)
    if mailbox is None:
        raise InvalidMessage(f"invalid_{what}", f"{what} is not exactly one address")
    return mailbox


def _mailbox(addr: Mailbox) -> str:
    """`Name <a@b>` with the name quoted or RFC 2047-encoded as needed (SES wants
    non-ASCII display names encoded); the bare address when there is no name."""
    if addr.display_name:
        return formataddr((addr.display_name, addr.addr_spec), charset="utf-8")
    return addr.addr_spec


def sender_mailbox(email: OutgoingEmail) -> str:
    addr = _address(email.from_address, "from")
    if email.display_name is not None:
        if has_control(email.display_name):
            raise InvalidMessage("invalid_from", "display name contains a control character")
        addr = Mailbox(email.display_name, addr.addr_spec)
    return _mailbox(addr)


def _clean_headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    if len(headers) > MAX_HEADERS:
        raise InvalidMessage("invalid_headers", "too many headers")
    cleaned = []
    for name, value in headers.items():
        if not HEADER_NAME_RE.fullmatch(name) or name.lower() in RESERVED_HEADERS:
            raise InvalidMessage("invalid_headers", f"header name {name!r} is not allowed")
        if not isinstance(value, str) or has_control(value) or len(value) > MAX_HEADER_VALUE:
            raise InvalidMessage("invalid_headers", f"header {name} has an invalid value")
        cleaned.append((name, value))
    return cleaned


def check_headers(headers: Mapping[str, str]) -> None:
    """Raises InvalidMessage when `headers` could not go into a message as they are."""
    _clean_headers(headers)


def recipient_mailbox(value: str) -> str:
    """A `To` address as SES gets it; raises InvalidMessage (`invalid_to`)."""
    return _mailbox(_address(value, "to"))


def tag_value(value: object) -> str:
    """A value SES accepts as a message tag (others are replaced by `_`)."""
    return _TAG_UNSAFE.sub("_", str(value))[:256] or "_"


def _header(name: str, value: str) -> str:
    """`Name: value`, RFC 2047-encoded (and folded) when the value is not plain ASCII or
    the line would be too long. Values never hold a control character here (checked before)."""
    if value.isascii() and len(name) + len(value) < 900:
        return f"{name}: {value}"
    return f"{name}: {Header(value, 'utf-8', header_name=name).encode(linesep=CRLF)}"


def _part(subtype: str, body: str) -> list[str]:
    encoded = base64.encodebytes(body.encode("utf-8")).decode("ascii").replace("\n", CRLF)
    return [
        f'Content-Type: text/{subtype}; charset="utf-8"',
        "Content-Transfer-Encoding: base64",
        "",
        encoded,
    ]


def _raw_mime(
    sender: str,
    to: list[Mailbox],
    cc: list[Mailbox],
    reply_to: list[Mailbox],
    subject: str,
    email: OutgoingEmail,
    headers: list[tuple[str, str]],
) -> bytes:
    """The MIME message, written directly (the stdlib `EmailMessage` takes ~1.5 ms per
    message, too slow for campaign volumes): ASCII headers, base64 UTF-8 bodies, one
    `multipart/alternative` when there are both bodies."""
    lines = [_header("From", sender), _header("To", ", ".join(_mailbox(a) for a in to))]
    if cc:
        lines.append(_header("Cc", ", ".join(_mailbox(a) for a in cc)))
    if reply_to:
        lines.append(_header("Reply-To", ", ".join(_mailbox(a) for a in reply_to)))
    lines.append(_header("Subject", subject))
    lines.append(f"Date: {formatdate(localtime=False, usegmt=True)}")
    lines.append("MIME-Version: 1.0")
    lines.extend(_header(name, value) for name, value in headers)
    parts = [("plain", email.text_body), ("html", email.html_body)]
    bodies = [(subtype, body) for subtype, body in parts if body is not None]
    if len(bodies) == 1:
        lines.extend(_part(*bodies[0]))
    else:
        boundary = f"=_dm_{secrets.token_hex(16)}"
        lines.extend([f'Content-Type: multipart/alternative; boundary="{boundary}"', ""])
        for subtype, body in bodies:
            lines.append(f"--{boundary}")
            lines.extend(_part(subtype, body))
        lines.append(f"--{boundary}--")
    return CRLF.join(lines).encode("ascii") + CRLF.encode()


def build_ses_request(
    email: OutgoingEmail,
    *,
    configuration_set: str | None = None,
    tags: Mapping[str, object] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for `sesv2.send_email(**request)`.

    `tags` become EmailTags (e.g. `{"transactional_message_id": 12, "client": "app"}` or
    `{"campaign_id": 55, "client": "app"}`) so SES events correlate. Raises InvalidMessage.
    """
    if email.html_body is None and email.text_body is None:
        raise InvalidMessage("empty_body", "the message has neither an HTML nor a text body")
    sender = sender_mailbox(email)
    to = [_address(a, "to") for a in email.to]
    cc = [_address(a, "cc") for a in email.cc]
    bcc = [_address(a, "bcc") for a in email.bcc]
    reply_to = [_address(a, "reply_to") for a in email.reply_to]
    if not to:
        raise InvalidMessage("invalid_to", "no recipient")
    headers = _clean_headers(email.headers)
    # A rendered subject never spans lines, whatever the template's context held.
    subject = one_line(email.subject)

    destination: dict[str, list[str]] = {"ToAddresses": [_mailbox(a) for a in to]}
    if cc:
        destination["CcAddresses"] = [_mailbox(a) for a in cc]
    if bcc:
        destination["BccAddresses"] = [_mailbox(a) for a in bcc]
    request: dict[str, Any] = {"FromEmailAddress": sender, "Destination": destination}
    if headers or cc or bcc:
        raw = _raw_mime(sender, to, cc, reply_to, subject, email, headers)
        request["Content"] = {"Raw": {"Data": raw}}
    else:
        body: dict[str, Any] = {}
        if email.text_body is not None:
            body["Text"] = {"Data": email.text_body, "Charset": "UTF-8"}
        if email.html_body is not None:
            body["Html"] = {"Data": email.html_body, "Charset": "UTF-8"}
        request["Content"] = {"Simple": {"Subject": {"Data": subject, "Charset": "UTF-8"}, "Body": body}}
        if reply_to:
            request["ReplyToAddresses"] = [_mailbox(a) for a in reply_to]
    if configuration_set:
        request["ConfigurationSetName"] = configuration_set
    if tags:
        request["EmailTags"] = [{"Name": tag_value(k), "Value": tag_value(v)} for k, v in tags.items()]
    return request
