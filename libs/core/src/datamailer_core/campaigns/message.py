"""One campaign message for one recipient: the rendered templates with tracking added.

- every `http(s)` link of the HTML (`<a>`/`<area>` hrefs) and of the text part becomes a
  click URL `{PUBLIC_BASE_URL}/t/c/{token}?u=<link>&s=<signature>`; the signature is an
  HMAC of the token and the link under SECRET_KEY, so the redirect reaches only links
  that were in a message sent to that token (no open redirect). `mailto:`, relative
  links and the message's own unsubscribe link are left alone;
- an open pixel `{PUBLIC_BASE_URL}/t/o/{token}.gif` at the end of the HTML body;
- a visible unsubscribe/preferences link, added at the end of each body that does not
  already show `{{ unsubscribe_url }}`;
- `List-Unsubscribe` (https, plus `mailto:` when LIST_UNSUBSCRIBE_MAILTO is set) and
  `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).

Tokens carry 256 random bits (`security.new_token`); only their hashes are stored.
"""

import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from hashlib import sha256
from html import escape, unescape
from typing import Any, Final
from urllib.parse import quote

from datamailer_core.campaigns.content import recipient_context, unsubscribe_url
from datamailer_core.mail import OutgoingEmail
from datamailer_core.models import Campaign, Client
from datamailer_core.senders import resolve_sender
from datamailer_core.settings import Settings
from datamailer_core.templating import render_message

SIGNATURE_CHARS: Final = 32  # 128 bits of the hex HMAC
FOOTER_TEXT: Final = "Unsubscribe or manage your email preferences"

_HREF = re.compile(r"""(<(?:a|area)\b[^>]*?\bhref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
_TEXT_URL = re.compile(r"""https?://[^\s<>"']+""", re.IGNORECASE)
_TRAILING = ".,;:!?)]}'"
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def click_signature(secret_key: str, token: str, url: str) -> str:
    digest = hmac.new(f"click:{secret_key}".encode(), f"{token}\n{url}".encode(), sha256)
    return digest.hexdigest()[:SIGNATURE_CHARS]


def click_link(public_base_url: str, token: str, url: str, signature: str) -> str:
    """The click URL for a token and signature (or the template variables standing for them)."""
    return f"{public_base_url.rstrip('/')}/t/c/{token}?u={quote(url, safe='')}&s={signature}"


def click_url(public_base_url: str, secret_key: str, token: str, url: str) -> str:
    return click_link(public_base_url, token, url, click_signature(secret_key, token, url))


def click_target_is_genuine(secret_key: str, token: str, url: str, signature: str) -> bool:
    """True when `url` was rewritten for `token` by `click_url` (constant-time)."""
    return hmac.compare_digest(click_signature(secret_key, token, url), signature)


def pixel_url(public_base_url: str, token: str) -> str:
    return f"{public_base_url.rstrip('/')}/t/o/{token}.gif"


def pixel_html(public_base_url: str, token: str) -> str:
    return f'<img src="{pixel_url(public_base_url, token)}" width="1" height="1" alt="" style="display:none">'


def _is_web_link(url: str) -> bool:
    return url[:8].lower().startswith(("http://", "https://"))


def rewrite_html_links(html: str, rewrite: Callable[[str], str | None]) -> str:
    """`rewrite(link)` gets the unescaped href; None leaves the attribute as it was."""

    def replace(match: re.Match[str]) -> str:
        link = unescape(match.group(3)).strip()
        new = rewrite(link) if _is_web_link(link) else None
        if new is None:
            return match.group(0)
        return f"{match.group(1)}{match.group(2)}{escape(new)}{match.group(2)}"

    return _HREF.sub(replace, html)


def rewrite_text_links(text: str, rewrite: Callable[[str], str | None]) -> str:
    def replace(match: re.Match[str]) -> str:
        found = match.group(0)
        link = found.rstrip(_TRAILING)
        new = rewrite(link)
        return found if new is None else new + found[len(link) :]

    return _TEXT_URL.sub(replace, text)


def before_body_end(html: str, addition: str) -> str:
    ends = list(_BODY_END.finditer(html))
    if not ends:
        return html + addition
    at = ends[-1].start()
    return html[:at] + addition + html[at:]


def unsubscribe_footer_html(html: str, unsubscribe: str) -> str:
    """The visible link, unless the body already shows it."""
    return "" if unsubscribe in html else f'<p><a href="{escape(unsubscribe)}">{FOOTER_TEXT}</a></p>'


def with_unsubscribe_text(text: str, unsubscribe: str) -> str:
    return text if unsubscribe in text else f"{text.rstrip()}\n\n--\n{FOOTER_TEXT}: {unsubscribe}\n"


def list_unsubscribe_headers(unsubscribe: str, mailto: str | None) -> dict[str, str]:
    """`List-Unsubscribe` (https, and `mailto:` when configured) with RFC 8058 one-click."""
    value = f"<{unsubscribe}>"
    if mailto:
        value += f", <mailto:{mailto}?subject=unsubscribe>"
    return {"List-Unsubscribe": value, "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


def with_unsubscribe(email: OutgoingEmail, unsubscribe: str, mailto: str | None) -> OutgoingEmail:
    """A message (transactional, with a category) given the same unsubscribe link and
    headers a campaign message gets."""
    html = email.html_body
    if html is not None:
        html = before_body_end(html, unsubscribe_footer_html(html, unsubscribe))
    text = email.text_body
    if text is not None:
        text = with_unsubscribe_text(text, unsubscribe)
    headers = {
        **{
            k: v
            for k, v in email.headers.items()
            if k.lower() not in ("list-unsubscribe", "list-unsubscribe-post")
        },
        **list_unsubscribe_headers(unsubscribe, mailto),
    }
    return replace(email, html_body=html, text_body=text, headers=headers)


@dataclass(frozen=True)
class CampaignContent:
    """What every recipient's message of one campaign shares."""

    campaign_id: int
    client_slug: str
    from_address: str
    display_name: str | None
    subject: str
    html_body: str | None
    text_body: str | None
    public_base_url: str
    secret_key: str
    list_unsubscribe_mailto: str | None = None
    extra_context: Mapping[str, Any] | None = None
    # CAMPAIGN_BULK_SEND: False sends every campaign per recipient (an SES endpoint
    # without SendBulkEmail, such as moto's server under `datamailer up`).
    bulk_send: bool = True


def campaign_content(
    campaign: Campaign, client: Client, settings: Settings, extra_context: Mapping[str, Any] | None = None
) -> CampaignContent:
    """Raises ValidationFailed (`from_email: not_configured`) when the campaign's sender
    is no longer one of the client's."""
    sender = resolve_sender(client, campaign.sender_id, None)
    return CampaignContent(
        campaign_id=campaign.id,
        client_slug=client.slug,
        from_address=sender.address,
        display_name=sender.display_name or None,
        subject=campaign.subject,
        html_body=campaign.html_body,
        text_body=campaign.text_body,
        public_base_url=settings.tracking.public_base_url,
        secret_key=settings.security.secret_key.get_secret_value(),
        list_unsubscribe_mailto=settings.tracking.list_unsubscribe_mailto,
        extra_context=extra_context,
        bulk_send=settings.delivery.campaign_bulk_send,
    )


def build_recipient_message(
    content: CampaignContent, *, email: str, tracking_token: str, unsubscribe_token: str
) -> OutgoingEmail:
    """One recipient's message exactly as the campaign's send mode sends it (the preview
    and the test-send use this): from the campaign's bulk template when it has one
    (`campaigns.bulk`), else rendered for the recipient. Raises `TemplateError`."""
    from datamailer_core.campaigns.bulk import plan_send

    plan = plan_send(content)
    if plan.template is not None:
        return plan.template.message(
            content, email=email, tracking_token=tracking_token, unsubscribe_token=unsubscribe_token
        )
    return render_recipient_message(
        content, email=email, tracking_token=tracking_token, unsubscribe_token=unsubscribe_token
    )


def render_recipient_message(
    content: CampaignContent, *, email: str, tracking_token: str, unsubscribe_token: str
) -> OutgoingEmail:
    """Render and decorate one recipient's message (the per-recipient `SendEmail` path);
    raises `TemplateError`."""
    base = content.public_base_url.rstrip("/")
    unsubscribe = unsubscribe_url(base, unsubscribe_token)
    context = recipient_context(
        email=email, public_base_url=base, unsubscribe_token=unsubscribe_token, extra=content.extra_context
    )
    rendered = render_message(content.subject, content.html_body, content.text_body, context)

    def track(link: str) -> str | None:
        if link.startswith(f"{base}/unsubscribe/"):
            return None
        return click_url(base, content.secret_key, tracking_token, link)

    html = rendered.html_body
    if html is not None:
        html = rewrite_html_links(html, track)
        html = before_body_end(
            html, unsubscribe_footer_html(html, unsubscribe) + pixel_html(base, tracking_token)
        )
    text = rendered.text_body
    if text is not None:
        text = with_unsubscribe_text(rewrite_text_links(text, track), unsubscribe)
    return OutgoingEmail(
        from_address=content.from_address,
        display_name=content.display_name,
        to=[email],
        subject=rendered.subject,
        html_body=html,
        text_body=text,
        headers=list_unsubscribe_headers(unsubscribe, content.list_unsubscribe_mailto),
    )
