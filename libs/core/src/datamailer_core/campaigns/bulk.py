"""A campaign as one SES inline template, sent with `SendBulkEmail` (up to 50
destinations per call), and the per-recipient fallback decision.

Decided once per campaign (`plan_send`, cached per content): the campaign's templates
use the recipient's values (`email`, `unsubscribe_url`, `preferences_url`) only as bare
`{{ name }}` outputs, checked on their Jinja AST, and everything else renders the same
for every recipient. Then the content is rendered once with marker values in their
place and decorated once as `message.render_recipient_message` decorates a recipient's
message (click links, pixel, unsubscribe footer); the markers and the tracking parts
become SES template variables:

- `{{e}}` the address (subject and text part), `{{eh}}` the address HTML-escaped as
  Jinja escapes it (the HTML part: SES does not escape what it substitutes);
- `{{t}}` the tracking token (pixel and click links), `{{u}}` the unsubscribe token;
- `{{s0}}`, `{{s1}}`, ... the click signature of each distinct link for this token, so
  the click route checks them exactly as before and refuses forged links.

Each destination's `ReplacementTemplateData` carries only the variables the template
uses; its `ReplacementHeaders` carry `List-Unsubscribe` (with its token) and the
template's `Headers` the constant `List-Unsubscribe-Post`. So every recipient gets the
same From, subject, bodies, links and headers as from the per-recipient path.

Content falls back to per-recipient `SendEmail` (`mode == "per_recipient"`, with the
reason) when a recipient value is used in any other way (filters, conditions, loops,
assignments), appears inside a link, or the rendered content itself holds `{{`/`}}`
(SES would read them as variables), or the marker render fails.
"""

import functools
import json
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from jinja2 import TemplateError as JinjaTemplateError
from jinja2 import nodes
from markupsafe import escape

from datamailer_core.campaigns.content import recipient_context, unsubscribe_url
from datamailer_core.campaigns.message import (
    CampaignContent,
    before_body_end,
    click_link,
    click_signature,
    list_unsubscribe_headers,
    pixel_html,
    rewrite_html_links,
    rewrite_text_links,
    unsubscribe_footer_html,
    with_unsubscribe_text,
)
from datamailer_core.mail import (
    OutgoingEmail,
    check_headers,
    one_line,
    recipient_mailbox,
    sender_mailbox,
    tag_value,
)
from datamailer_core.templating import TemplateError, render_message, translate_django
from datamailer_core.templating.sandbox import TEXT_ENV

SendMode = Literal["bulk", "per_recipient"]
MAX_BULK_ENTRIES: Final = 50
RECIPIENT_FIELDS: Final = frozenset({"email", "unsubscribe_url", "preferences_url"})
# Marker values: letters and digits only, so HTML escaping, URL and link detection treat
# them as they treat an address's or a token's characters.
_MARK: Final = f"dm{secrets.token_hex(8)}"
_EMAIL_MARK: Final = f"{_MARK}e"
_TOKEN_MARK: Final = f"{_MARK}u"
_SAMPLE_BASE: Final = "https://example.invalid"


class _PerRecipient(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _var(name: str) -> str:
    return "{{" + name + "}}"


def per_recipient_logic(source: str | None) -> str | None:
    """Why this template needs a per-recipient render (None: bare `{{ name }}` uses of the
    recipient's values only), from its Jinja AST."""
    if source is None:
        return None
    try:
        tree = TEXT_ENV.parse(translate_django(source))
    except (JinjaTemplateError, SyntaxError, ValueError, TypeError, RecursionError):
        return "invalid_template"
    bare = {id(child) for output in tree.find_all(nodes.Output) for child in output.nodes}
    for name in tree.find_all(nodes.Name):
        if name.name in RECIPIENT_FIELDS and id(name) not in bare:
            return f"{name.name} used beyond {{{{ {name.name} }}}}"
    return None


@dataclass(frozen=True)
class BulkTemplate:
    """The campaign as an SES inline template (see the module docstring)."""

    subject: str
    html: str | None
    text: str | None
    links: tuple[str, ...]  # `s{i}` signs links[i]
    variables: frozenset[str]  # of e, eh, t, u: those the template uses

    def data(
        self, secret_key: str, *, email: str, tracking_token: str, unsubscribe_token: str
    ) -> dict[str, str]:
        """This recipient's values for the template's variables."""
        values = {"e": email, "eh": str(escape(email)), "t": tracking_token, "u": unsubscribe_token}
        data = {name: values[name] for name in self.variables}
        for i, link in enumerate(self.links):
            data[f"s{i}"] = click_signature(secret_key, tracking_token, link)
        return data

    def message(
        self, content: CampaignContent, *, email: str, tracking_token: str, unsubscribe_token: str
    ) -> OutgoingEmail:
        """The message SES renders from this template for one recipient (substituted
        here as SES substitutes): what the preview and the test-send show."""
        data = self.data(
            content.secret_key,
            email=email,
            tracking_token=tracking_token,
            unsubscribe_token=unsubscribe_token,
        )
        return OutgoingEmail(
            from_address=content.from_address,
            display_name=content.display_name,
            to=[email],
            subject=substitute(self.subject, data),
            html_body=None if self.html is None else substitute(self.html, data),
            text_body=None if self.text is None else substitute(self.text, data),
            headers=recipient_headers(content, unsubscribe_token),
        )

    def content(self) -> dict[str, str]:
        parts = {"Subject": self.subject}
        if self.html is not None:
            parts["Html"] = self.html
        if self.text is not None:
            parts["Text"] = self.text
        return parts


def substitute(template: str, data: Mapping[str, str]) -> str:
    """SES's `{{name}}` substitution for the variables this module writes."""
    out = template
    for name, value in data.items():
        out = out.replace(_var(name), value)
    return out


def recipient_headers(content: CampaignContent, unsubscribe_token: str) -> dict[str, str]:
    base = content.public_base_url.rstrip("/")
    return list_unsubscribe_headers(unsubscribe_url(base, unsubscribe_token), content.list_unsubscribe_mailto)


@dataclass(frozen=True)
class SendPlan:
    mode: SendMode
    reason: str | None = None
    template: BulkTemplate | None = None


def _template(
    subject: str, html_body: str | None, text_body: str | None, base: str, extra: Mapping[str, Any] | None
) -> BulkTemplate:
    for source in (subject, html_body, text_body):
        if (reason := per_recipient_logic(source)) is not None:
            raise _PerRecipient(reason)
    context = recipient_context(
        email=_EMAIL_MARK, public_base_url=base, unsubscribe_token=_TOKEN_MARK, extra=extra
    )
    try:
        rendered = render_message(subject, html_body, text_body, context)
    except TemplateError as exc:
        raise _PerRecipient(f"template: {exc.reason}") from None
    for part in (rendered.subject, rendered.html_body, rendered.text_body):
        if part is not None and ("{{" in part or "}}" in part):
            raise _PerRecipient("the content shows {{ or }}")
    unsubscribe = unsubscribe_url(base, _TOKEN_MARK)
    links: dict[str, int] = {}

    def track(link: str) -> str | None:
        if link.startswith(f"{base}/unsubscribe/"):
            return None
        if _MARK in link:
            raise _PerRecipient("a link holds a recipient value")
        index = links.setdefault(link, len(links))
        return click_link(base, _var("t"), link, _var(f"s{index}"))

    html = rendered.html_body
    if html is not None:
        html = rewrite_html_links(html, track)
        html = before_body_end(html, unsubscribe_footer_html(html, unsubscribe) + pixel_html(base, _var("t")))
        html = html.replace(_EMAIL_MARK, _var("eh")).replace(_TOKEN_MARK, _var("u"))
    text = rendered.text_body
    if text is not None:
        text = with_unsubscribe_text(rewrite_text_links(text, track), unsubscribe)
        text = text.replace(_EMAIL_MARK, _var("e")).replace(_TOKEN_MARK, _var("u"))
    subject_out = one_line(rendered.subject).replace(_EMAIL_MARK, _var("e")).replace(_TOKEN_MARK, _var("u"))
    parts = [p for p in (subject_out, html, text) if p is not None]
    if any(_MARK in p for p in parts):
        raise _PerRecipient("a recipient value is used in a way the template cannot express")
    used = frozenset(name for name in ("e", "eh", "t", "u") if any(_var(name) in p for p in parts))
    return BulkTemplate(subject_out, html, text, tuple(links), used)


def _plan(
    subject: str, html_body: str | None, text_body: str | None, base: str, extra: Mapping[str, Any] | None
) -> SendPlan:
    try:
        template = _template(subject, html_body, text_body, base.rstrip("/"), extra)
    except _PerRecipient as exc:
        return SendPlan("per_recipient", exc.reason)
    return SendPlan("bulk", None, template)


@functools.lru_cache(maxsize=64)
def _cached_plan(subject: str, html_body: str | None, text_body: str | None, base: str) -> SendPlan:
    return _plan(subject, html_body, text_body, base, None)


def plan_send(content: CampaignContent) -> SendPlan:
    """How this campaign is sent: `bulk` with its template, or `per_recipient` and why."""
    if not content.bulk_send:
        return SendPlan("per_recipient", "bulk_send_disabled")
    if content.extra_context:
        return _plan(content.subject, content.html_body, content.text_body, content.public_base_url,
                     content.extra_context)  # fmt: skip
    return _cached_plan(content.subject, content.html_body, content.text_body, content.public_base_url)


def send_mode(
    subject: str, html_body: str | None, text_body: str | None, *, bulk_send: bool
) -> tuple[SendMode, str | None]:
    """How a campaign with this content is sent, and why not in bulk (for its status):
    the workers' `plan_send` decides the same way from the same content."""
    if not bulk_send:
        return "per_recipient", "bulk_send_disabled"
    plan = _cached_plan(subject, html_body, text_body, _SAMPLE_BASE)
    return plan.mode, plan.reason


@dataclass(frozen=True)
class BulkRecipient:
    id: int
    email: str
    tracking_token: str
    unsubscribe_token: str


def bulk_request(
    content: CampaignContent,
    template: BulkTemplate,
    *,
    configuration_set: str | None,
    tags: Mapping[str, object],
) -> dict[str, Any]:
    """The part of every `send_bulk_email` request of this campaign but the entries;
    raises InvalidMessage (sender, headers)."""
    sender = sender_mailbox(OutgoingEmail(content.from_address, (), "", display_name=content.display_name))
    check_headers(recipient_headers(content, _TOKEN_MARK))
    request: dict[str, Any] = {
        "FromEmailAddress": sender,
        "DefaultContent": {
            "Template": {
                "TemplateContent": template.content(),
                "TemplateData": "{}",
                "Headers": [{"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"}],
            }
        },
        "DefaultEmailTags": [{"Name": tag_value(k), "Value": tag_value(v)} for k, v in tags.items()],
    }
    if configuration_set:
        request["ConfigurationSetName"] = configuration_set
    return request


def bulk_entry(content: CampaignContent, template: BulkTemplate, recipient: BulkRecipient) -> dict[str, Any]:
    """One destination; raises InvalidMessage (`invalid_to`)."""
    to = recipient_mailbox(recipient.email)
    data = template.data(
        content.secret_key,
        email=recipient.email,
        tracking_token=recipient.tracking_token,
        unsubscribe_token=recipient.unsubscribe_token,
    )
    headers = recipient_headers(content, recipient.unsubscribe_token)
    return {
        "Destination": {"ToAddresses": [to]},
        "ReplacementEmailContent": {"ReplacementTemplate": {"ReplacementTemplateData": json.dumps(data)}},
        "ReplacementHeaders": [{"Name": "List-Unsubscribe", "Value": headers["List-Unsubscribe"]}],
    }


def chunks(items: list[Any], size: int = MAX_BULK_ENTRIES) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# Per-entry statuses (BulkEmailStatus; the API reference and the SDK model spell the
# not-found ones differently, both are here).
SENT_STATUS: Final = "SUCCESS"
THROTTLED_STATUSES: Final = frozenset({"ACCOUNT_THROTTLED"})
RETRY_STATUSES: Final = frozenset(
    {
        "ACCOUNT_THROTTLED",
        "TRANSIENT_FAILURE",
        "ACCOUNT_DAILY_QUOTA_EXCEEDED",
        "ACCOUNT_SENDING_PAUSED",
        "CONFIGURATION_SET_SENDING_PAUSED",
    }
)
FAILED_STATUSES: Final = frozenset(
    {
        "MESSAGE_REJECTED",
        "MAIL_FROM_DOMAIN_NOT_VERIFIED",
        "CONFIGURATION_SET_DOES_NOT_EXIST",
        "CONFIGURATION_SET_NOT_FOUND",
        "TEMPLATE_DOES_NOT_EXIST",
        "TEMPLATE_NOT_FOUND",
        "ACCOUNT_SUSPENDED",
        "INVALID_SENDING_POOL_NAME",
        "INVALID_PARAMETER",
        "INVALID_PARAMETER_VALUE",
        "FAILED",
    }
)


def entry_outcome(status: str) -> Literal["sent", "retry", "failed"]:
    """What an entry's status means for its recipient (an unknown status fails it)."""
    if status == SENT_STATUS:
        return "sent"
    if status in RETRY_STATUSES:
        return "retry"
    return "failed"
