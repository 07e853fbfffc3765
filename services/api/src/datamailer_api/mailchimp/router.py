"""`/api/client/mailchimp`: the client's one-way Mailchimp sync. Set-only, as in
Datamailer: the API key is written and never returned (there is no GET)."""

from fastapi import APIRouter

from datamailer_api.audience import service
from datamailer_api.deps import CurrentClient
from datamailer_api.mailchimp.schemas import (
    MailchimpIn,
    MailchimpOut,
    TagMappingOut,
    TagMappingsIn,
    TagMappingsOut,
)
from datamailer_core.errors import ValidationFailed
from datamailer_core.mailchimp import datacenter
from datamailer_core.models import MailchimpAccount
from datamailer_core.repositories import mailchimp
from datamailer_web.app import SessionDep
from datamailer_web.errors import error_responses

router = APIRouter(
    prefix="/api/client/mailchimp", tags=["mailchimp"], responses=error_responses(400, 401, 403, 413, 415)
)


def _account_out(slug: str, account: MailchimpAccount) -> MailchimpOut:
    return MailchimpOut(
        client=slug,
        enabled=account.enabled,
        configured=mailchimp.is_configured(account),
        list_id=account.list_id,
        datacenter=datacenter(account.api_key) or "",
        api_key_set=bool(account.api_key),
    )


@router.put("", response_model=MailchimpOut)
async def put_mailchimp(body: MailchimpIn, auth: CurrentClient, session: SessionDep) -> MailchimpOut:
    """Set the Mailchimp key, audience id and enabled flag; only the fields sent change."""
    auth.require_client(body.client)
    changes: dict[str, object] = {}
    fields: dict[str, str] = {}
    sent = body.model_fields_set
    if "api_key" in sent:
        key = (body.api_key or "").strip()
        if key and "-" not in key:
            fields["api_key"] = "missing_datacenter_suffix"
        elif key and datacenter(key) is None:
            fields["api_key"] = "invalid"
        changes["api_key"] = key
    if "list_id" in sent:
        changes["list_id"] = body.list_id or ""
    if "enabled" in sent:
        if body.enabled is None:
            fields["enabled"] = "invalid"
        changes["enabled"] = body.enabled
    if fields:
        raise ValidationFailed("invalid Mailchimp settings", fields=fields)
    account = await mailchimp.update_account(session, auth.client.id, changes)
    await session.commit()
    return _account_out(auth.client.slug, account)


@router.put("/tag-mappings", response_model=TagMappingsOut)
async def put_tag_mappings(body: TagMappingsIn, auth: CurrentClient, session: SessionDep) -> TagMappingsOut:
    """Replace the client's mappings of recipient-list subtrees to Mailchimp tags in the
    audience; mappings not in the body are removed."""
    scope = await service.resolve_scope(session, auth, body.audience, body.client)
    seen: set[tuple[str, str]] = set()
    fields: dict[str, str] = {}
    for i, m in enumerate(body.mappings):
        pair = (m.list_key, m.tag.strip())
        if pair in seen:
            fields[f"mappings.{i}"] = "duplicate"
        seen.add(pair)
    if fields:
        raise ValidationFailed("duplicate tag mappings", fields=fields)
    rows = await mailchimp.replace_mappings(
        session,
        scope.client_id,
        scope.audience.id,
        [(m.list_key, m.tag.strip(), m.enabled) for m in body.mappings],
    )
    await session.commit()
    slug = scope.audience.slug
    return TagMappingsOut(
        client=auth.client.slug,
        audience=slug,
        mappings=[
            TagMappingOut(audience=slug, list_key=r.list_key, tag=r.tag, enabled=r.enabled) for r in rows
        ],
    )
