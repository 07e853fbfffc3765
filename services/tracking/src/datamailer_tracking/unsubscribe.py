"""`GET /unsubscribe/{token}`: the unsubscribe and preferences page of one message;
`POST` applies the form's choice, or, with the RFC 8058 body `List-Unsubscribe=One-Click`,
unsubscribes at once with no page (a mail client posts it without any user around).

The token in the URL is the only credential: the form carries no other secret, and every
POST is idempotent (choosing the same again changes nothing). State changes go through
the core's audience engine (`repositories.unsubscribe`)."""

from typing import Any, Final, cast

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from starlette.datastructures import FormData

from datamailer_core.repositories import unsubscribe as repo
from datamailer_tracking.pages import mask_email, page
from datamailer_web.app import SessionDep, SettingsDep

router = APIRouter(tags=["unsubscribe"])

ONE_CLICK: Final = ("List-Unsubscribe", "One-Click")
MAX_CATEGORIES: Final = 50
PAGE: Final[dict[int | str, dict[str, Any]]] = {
    200: {"content": {"text/html": {}}, "description": "An HTML page."}
}
NOT_FOUND_LINES: Final = [
    "This unsubscribe link is not valid, or the address it was sent to no longer exists.",
    "Nothing was changed. Please use the link in the most recent email you received.",
]


def _not_found() -> HTMLResponse:
    return page("message.html", 404, heading="Link not found", tone="problem", lines=NOT_FOUND_LINES)


def _context(target: repo.Target, request: Request) -> dict[str, Any]:
    return {
        "client_name": target.client_name,
        "audience_name": target.audience_name,
        "masked_email": mask_email(target.email),
        "action": request.url.path,
    }


@router.get("/unsubscribe/{token}", response_class=HTMLResponse, responses=PAGE)
async def unsubscribe_page(
    token: str, request: Request, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """The form: leave the client, the audience or everything, and switch categories."""
    target = await repo.find_target(session, settings.security.secret_key.get_secret_value(), token)
    if target is None:
        return _not_found()
    state = await repo.page_state(session, target)
    # A transactional message's own link is about its category; a campaign's is about the sender.
    default_scope = "client" if target.kind == "campaign" else None
    return page(
        "unsubscribe.html", state=state, default_scope=default_scope, error=None, **_context(target, request)
    )


def _categories(form: FormData) -> dict[str, bool] | None:
    """`category` lists the tags the form showed, `enabled` the ticked ones."""
    shown = [str(v) for v in form.getlist("category")][:MAX_CATEGORIES]
    enabled = {str(v) for v in form.getlist("enabled")}
    if not shown:
        return None
    return {tag: tag in enabled for tag in shown if 0 < len(tag) <= 100}


@router.post(
    "/unsubscribe/{token}",
    response_class=HTMLResponse,
    responses={**PAGE, 204: {"description": "One-click unsubscribe (RFC 8058) applied."}},
)
async def unsubscribe_submit(
    token: str, request: Request, session: SessionDep, settings: SettingsDep
) -> Response:
    """Apply the form (`scope` = none | client | audience | global, plus `category` /
    `enabled`), or a one-click unsubscribe (`List-Unsubscribe=One-Click`)."""
    form = await request.form()
    target = await repo.find_target(session, settings.security.secret_key.get_secret_value(), token)
    if form.get(ONE_CLICK[0]) == ONE_CLICK[1]:
        if target is None:
            return Response("unknown token\n", status_code=404, media_type="text/plain")
        await repo.one_click(session, target)
        await session.commit()
        return Response("unsubscribed\n", status_code=200, media_type="text/plain")
    if target is None:
        return _not_found()
    raw_scope = str(form.get("scope") or "none")
    categories = _categories(form)
    if raw_scope != "none" and raw_scope not in repo.SCOPES:
        state = await repo.page_state(session, target)
        return page(
            "unsubscribe.html",
            400,
            state=state,
            default_scope=None,
            error="Please choose one of the options below.",
            **_context(target, request),
        )
    scope = None if raw_scope == "none" else cast(repo.Scope, raw_scope)  # checked against SCOPES
    before = {c.tag: c.enabled for c in (await repo.page_state(session, target)).categories}
    await repo.apply_choice(
        session,
        target,
        scope=scope,
        categories=categories or {},
        source="unsubscribe_page",
    )
    await session.commit()
    state = await repo.page_state(session, target)
    labels = {c.tag: c.label for c in state.categories}
    disabled = [labels[t] for t, on in (categories or {}).items() if not on and before.get(t, True)]
    return page("unsubscribed.html", scope=scope, disabled=disabled, **_context(target, request))
