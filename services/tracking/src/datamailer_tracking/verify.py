"""`GET /verify/{token}`: the double opt-in link. A valid token confirms its pending
subscription once (through the audience engine, which records the `subscribe` event);
an unknown, expired or used token shows why and changes nothing."""

from typing import Final

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from datamailer_core.repositories import verification
from datamailer_tracking.pages import mask_email, page
from datamailer_web.app import SessionDep, SettingsDep

router = APIRouter(tags=["verification"])

PROBLEMS: Final = {
    "unknown": ("Link not valid", "This confirmation link is not valid. Nothing was changed."),
    "expired": (
        "Link expired",
        "This confirmation link has expired. Nothing was changed: please sign up again to get a new one.",
    ),
    "used": ("Link already used", "This confirmation link was already used. Nothing was changed."),
    "unsubscribed": (
        "Subscription cancelled",
        "This address unsubscribed after asking to join, so nothing was changed.",
    ),
}


@router.get(
    "/verify/{token}",
    response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {}}, "description": "An HTML page."}},
)
async def verify(token: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    result = await verification.confirm(session, settings.security.secret_key.get_secret_value(), token)
    if result.outcome in ("confirmed", "already_confirmed"):
        await session.commit()
        who = mask_email(result.email or "")
        lines = [f"{who} is subscribed to {result.client_name} ({result.audience_name}). Thank you!"]
        if result.outcome == "already_confirmed":
            lines = [f"{who} was already confirmed for {result.client_name}. Nothing else to do."]
        return page("message.html", heading="Subscription confirmed", tone="done", lines=lines)
    heading, line = PROBLEMS[result.outcome]
    status = 404 if result.outcome == "unknown" else 410
    return page("message.html", status, heading=heading, tone="problem", lines=[line])
