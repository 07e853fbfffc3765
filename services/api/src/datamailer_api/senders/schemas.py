from pydantic import BaseModel, ConfigDict, Field

from datamailer_core.senders import IdentityCheck


class SenderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(
        max_length=64, examples=["support"], json_schema_extra={"pattern": r"^[a-z0-9][a-z0-9_-]{0,63}$"}
    )
    email: str = Field(
        max_length=320,
        examples=["Support Team <support@example.com>"],
        description="One mailbox: `support@example.com` or `Support Team <support@example.com>` "
        "(no JSON Schema format says that much); anything else is `invalid`.",
    )


class SendersIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "senders": [{"id": "support", "email": "Support <support@example.com>"}],
                    "default_sender_id": "support",
                }
            ]
        },
    )
    client: str | None = Field(default=None, description="The client slug; must be the key's own.")
    senders: list[SenderIn] = Field(max_length=100)
    default_sender_id: str | None = None


class ClientOut(BaseModel):
    organization: str
    slug: str
    name: str


class SenderOut(BaseModel):
    id: str
    email: str


class SendersOut(BaseModel):
    client: ClientOut
    default_sender_id: str | None
    senders: list[SenderOut]


class SendersSetOut(SendersOut):
    identities: list[IdentityCheck] = Field(
        description="Each sender's address as SES sees it (`GetEmailIdentity`), in the order of "
        "`senders`: mail from an unverified address is refused by SES."
    )
