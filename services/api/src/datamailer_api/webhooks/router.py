"""Outbound webhook settings and deliveries of the calling client (queues.md "Outbound
webhooks to client applications"). A client sees and changes only its own."""

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from datamailer_api.deps import AuthContext, CurrentClient
from datamailer_api.senders.schemas import ClientOut
from datamailer_api.webhooks.schemas import (
    DeliveriesOut,
    DeliveryOut,
    EndpointOut,
    EndpointSavedOut,
    WebhooksIn,
    WebhooksOut,
    WebhooksSavedOut,
)
from datamailer_core.errors import ValidationFailed
from datamailer_core.models import WebhookEndpoint
from datamailer_core.repositories import webhooks
from datamailer_core.repositories.webhooks import EVENT_TYPES, DeliveryView, EndpointInput
from datamailer_core.settings import Environment
from datamailer_core.webhooks import url_problem
from datamailer_web.app import SessionDep, SettingsDep
from datamailer_web.errors import error_responses

router = APIRouter(prefix="/api/client/webhooks", tags=["webhooks"], responses=error_responses(401, 403))


def _client_out(auth: AuthContext) -> ClientOut:
    return ClientOut(organization=auth.organization.slug, slug=auth.client.slug, name=auth.client.name)


def _endpoint_fields(endpoint: WebhookEndpoint) -> dict[str, object]:
    return {
        "url": endpoint.url,
        "event_types": endpoint.event_types,
        "has_bearer_token": endpoint.bearer_token is not None,
        "status": endpoint.status,
        "failure_count": endpoint.failure_count,
        "last_error": endpoint.last_error,
        "last_success_at": endpoint.last_success_at,
        "last_failure_at": endpoint.last_failure_at,
        "disabled_at": endpoint.disabled_at,
        "created_at": endpoint.created_at,
    }


def _delivery_out(view: DeliveryView) -> DeliveryOut:
    d = view.delivery
    return DeliveryOut.model_validate(
        {
            "event_id": d.event_id,
            "event_type": d.event_type,
            "url": view.url,
            "status": d.status,
            "attempt_count": d.attempt_count,
            "next_attempt_at": d.next_attempt_at,
            "last_status_code": d.last_status_code,
            "last_error": d.last_error,
            "delivered_at": d.delivered_at,
            "created_at": d.created_at,
            "data": d.payload,
            "attempts": d.attempts,
        }
    )


def _validated(body: WebhooksIn, *, production: bool) -> list[EndpointInput]:
    fields: dict[str, str] = {}
    seen: set[str] = set()
    wanted: list[EndpointInput] = []
    for i, item in enumerate(body.endpoints):
        if (problem := url_problem(item.url, production=production)) is not None:
            fields[f"endpoints.{i}.url"] = problem
        elif item.url in seen:
            fields[f"endpoints.{i}.url"] = "duplicate"
        seen.add(item.url)
        types = item.event_types
        for j, kind in enumerate(types or []):
            if kind not in EVENT_TYPES:
                fields[f"endpoints.{i}.event_types.{j}"] = "invalid"
        token = item.bearer_token if "bearer_token" in item.model_fields_set else "keep"
        event_types: list[str] | None = [t for t in EVENT_TYPES if t in types] if types else None
        wanted.append(EndpointInput(item.url, event_types, token, item.rotate_secret))
    if fields:
        raise ValidationFailed("invalid webhook endpoints", fields=fields)
    return wanted


@router.get("", response_model=WebhooksOut)
async def get_webhooks(auth: CurrentClient, session: SessionDep, client: str | None = None) -> WebhooksOut:
    """The client's webhook endpoints (signing secrets and tokens are never shown here)."""
    auth.require_client(client)
    endpoints = await webhooks.list_endpoints(session, auth.client.id)
    return WebhooksOut(
        client=_client_out(auth),
        event_types=list(EVENT_TYPES),
        endpoints=[EndpointOut.model_validate(_endpoint_fields(e)) for e in endpoints],
    )


@router.put("", response_model=WebhooksSavedOut, responses=error_responses(400, 413, 415))
async def put_webhooks(
    body: WebhooksIn, auth: CurrentClient, session: SessionDep, settings: SettingsDep
) -> WebhooksSavedOut:
    """Replace the client's endpoints, matched by URL. A new endpoint, or one with
    `rotate_secret`, gets a signing secret returned in this response only; an endpoint
    left out is removed with its deliveries."""
    auth.require_client(body.client)
    wanted = _validated(body, production=settings.environment == Environment.production)
    saved = await webhooks.replace_endpoints(session, auth.client.id, wanted)
    out = WebhooksSavedOut(
        client=_client_out(auth),
        event_types=list(EVENT_TYPES),
        endpoints=[EndpointSavedOut.model_validate({**_endpoint_fields(e), "secret": s}) for e, s in saved],
    )
    await session.commit()
    return out


@router.get("/deliveries", response_model=DeliveriesOut, responses=error_responses(400))
async def get_deliveries(
    auth: CurrentClient,
    session: SessionDep,
    status: Literal["pending", "delivering", "delivered", "failed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    client: str | None = None,
) -> DeliveriesOut:
    """The client's webhook deliveries, newest first, each with its attempts."""
    auth.require_client(client)
    views, next_cursor = await webhooks.list_deliveries(
        session, auth.client.id, status=status, limit=limit, cursor=cursor
    )
    return DeliveriesOut(deliveries=[_delivery_out(v) for v in views], next_cursor=next_cursor)


@router.post(
    "/deliveries/{event_id}/replay", response_model=DeliveryOut, responses=error_responses(400, 404, 409)
)
async def replay_delivery(
    event_id: uuid.UUID, auth: CurrentClient, session: SessionDep, client: str | None = None
) -> DeliveryOut:
    """Queue the event again now, with a fresh round of retries; the receiver gets the
    same `webhook-id`. An endpoint that is disabled receives it once re-enabled."""
    auth.require_client(client)
    view = await webhooks.replay(session, auth.client.id, event_id)
    out = _delivery_out(view)
    await session.commit()
    return out
