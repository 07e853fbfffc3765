import asyncio

from fastapi import APIRouter

from datamailer_api.deps import AuthContext, CurrentClient
from datamailer_api.senders.schemas import ClientOut, SenderOut, SendersIn, SendersOut, SendersSetOut
from datamailer_core.repositories import scope
from datamailer_core.senders import check_identity, validate_senders
from datamailer_web.app import SesDep, SessionDep
from datamailer_web.errors import error_responses

router = APIRouter(prefix="/api/client", tags=["senders"], responses=error_responses(401, 403))


def _senders_out(auth: AuthContext) -> SendersOut:
    client = auth.client
    return SendersOut(
        client=ClientOut(organization=auth.organization.slug, slug=client.slug, name=client.name),
        default_sender_id=client.default_sender_id,
        senders=[SenderOut(id=s["id"], email=s["email"]) for s in client.sender_emails],
    )


@router.get("/senders", response_model=SendersOut)
async def get_senders(auth: CurrentClient, client: str | None = None) -> SendersOut:
    """The client's sender identities and its default sender."""
    auth.require_client(client)
    return _senders_out(auth)


@router.put("/senders", response_model=SendersSetOut, responses=error_responses(400, 413, 415))
async def put_senders(
    body: SendersIn, auth: CurrentClient, session: SessionDep, sesv2: SesDep
) -> SendersSetOut:
    """Replace the client's sender identities; the default must be one of them. The
    response's `identities` says, for each, whether SES will send from it."""
    auth.require_client(body.client)
    senders, default = validate_senders([s.model_dump() for s in body.senders], body.default_sender_id)
    await scope.set_senders(session, auth.client, senders, default)
    await session.commit()
    identities = await asyncio.gather(*(check_identity(sesv2, s) for s in senders))
    return SendersSetOut(**_senders_out(auth).model_dump(), identities=list(identities))
