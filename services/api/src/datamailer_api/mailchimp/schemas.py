from pydantic import BaseModel, ConfigDict, Field, StrictBool

from datamailer_api.audience.schemas import ScopeSlug

MAX_MAPPINGS = 500
# `<all>`, or `:`-separated recipient-list path segments (`course:2025:@registered`).
LIST_KEY = r"^(<all>|[A-Za-z0-9@_.-]+(:[A-Za-z0-9@_.-]+)*)$"


class MailchimpIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"api_key": "abc123def456xxxxxxxxxxxxxxxxxxxx-us21", "list_id": "1a2b3c4d5e", "enabled": True}
            ]
        },
    )
    client: ScopeSlug | None = Field(default=None, description="The client slug; must be the key's own.")
    api_key: str | None = Field(
        default=None,
        max_length=100,
        description="Mailchimp API key with its `-<datacenter>` suffix; write-only, never returned. "
        "Omitted keeps it, null or empty clears it.",
    )
    list_id: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[A-Za-z0-9]*$",
        description="The Mailchimp audience (list) id; null or empty clears it.",
    )
    enabled: StrictBool | None = Field(
        default=None, description="Turn the sync on or off without resending the key."
    )


class MailchimpOut(BaseModel):
    client: str
    enabled: bool
    configured: bool = Field(description="A key and a list id are set.")
    list_id: str
    datacenter: str
    api_key_set: bool


class TagMappingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    list_key: str = Field(
        min_length=1,
        max_length=255,
        pattern=LIST_KEY,
        description="A recipient-list node; it covers its subtree. `<all>` covers every list.",
    )
    tag: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*$")
    enabled: StrictBool = True


class TagMappingsIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "audience": "dtc-courses",
                    "mappings": [
                        {
                            "list_key": "ai-dev-tools-zoomcamp-2026:@registered",
                            "tag": "ai-dev-tools-zoomcamp-2026",
                        },
                        {"list_key": "<all>", "tag": "dtc-courses-audience", "enabled": True},
                    ],
                }
            ]
        },
    )
    client: ScopeSlug | None = Field(default=None, description="The client slug; must be the key's own.")
    audience: ScopeSlug
    mappings: list[TagMappingIn] = Field(max_length=MAX_MAPPINGS)


class TagMappingOut(BaseModel):
    audience: str
    list_key: str
    tag: str
    enabled: bool


class TagMappingsOut(BaseModel):
    client: str
    audience: str
    mappings: list[TagMappingOut]
