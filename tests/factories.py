"""Factories per aggregate: build rows the way the product does, through repositories."""

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.repositories import scope
from datamailer_core.senders import validate_senders


@dataclass
class Tenant:
    scope: scope.Scope
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def client_slug(self) -> str:
        return self.scope.client.slug

    @property
    def audience_slug(self) -> str:
        return self.scope.audience.slug


class TenantFactory:
    def __init__(self, session: AsyncSession, secret_key: str) -> None:
        self.session, self.secret_key = session, secret_key

    async def create(
        self,
        organization: str = "acme",
        audience: str = "newsletter",
        client: str = "app",
        senders: list[dict[str, str]] | None = None,
    ) -> Tenant:
        found = await scope.provision(
            self.session, organization=organization, audience=audience, client=client
        )
        cleaned, default = validate_senders(
            senders or [{"id": "support", "email": f"Support <support@{client}.example.com>"}], None
        )
        await scope.set_senders(self.session, found.client, cleaned, default)
        _, issued = await scope.create_key(self.session, found.client, "default", self.secret_key)
        await self.session.commit()
        return Tenant(scope=found, key=issued.raw)
