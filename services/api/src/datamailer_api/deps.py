"""Request dependencies: the authenticated client and the scope checks every route uses."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from datamailer_core.errors import Forbidden, Unauthorized
from datamailer_core.models import Client, ClientApiKey, Organization
from datamailer_core.repositories import scope
from datamailer_core.security import api_key_matches, hash_api_key, parse_api_key
from datamailer_web.app import SessionDep, SettingsDep


@dataclass(frozen=True)
class AuthContext:
    client: Client
    organization: Organization
    key: ClientApiKey

    def require_client(self, slug: str | None) -> None:
        """A scoped request names the client; it must be the key's own."""
        if slug is not None and slug != self.client.slug:
            raise Forbidden("the API key does not belong to this client", fields={"client": "forbidden"})


async def current_client(request: Request, session: SessionDep, settings: SettingsDep) -> AuthContext:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("send Authorization: Bearer <api key>", code="missing_authorization")
    scheme, _, raw = header.partition(" ")
    raw = raw.strip()
    if scheme.lower() != "bearer" or not raw:
        raise Unauthorized("the Authorization header must be a Bearer token", code="invalid_authorization")
    secret = settings.security.secret_key.get_secret_value()
    public_id = parse_api_key(raw)
    found = await scope.get_key_with_client(session, public_id) if public_id else None
    if found is None:
        hash_api_key(secret, raw)  # same work on every path: no timing hint that an id exists
        raise Unauthorized("invalid API key", code="invalid_api_key")
    key, client, organization = found
    if not api_key_matches(secret, raw, key.key_hash):
        raise Unauthorized("invalid API key", code="invalid_api_key")
    if not client.is_active:
        raise Unauthorized("this client is inactive", code="inactive_client")
    if await scope.touch_key(session, key.id, key.last_used_at):
        await session.commit()
    return AuthContext(client=client, organization=organization, key=key)


CurrentClient = Annotated[AuthContext, Depends(current_client)]
