"""Schemathesis hooks of `make fuzz` (loaded by `st` through SCHEMATHESIS_HOOKS).

`positive_data_accepted` replaces schemathesis' `positive_data_acceptance` (excluded on the
command line). It fails, like the built-in check, when a request the schema calls valid is
answered with anything but 2xx, 3xx, 401, 403, 404, 409, 413 or 429 (a 5xx is reported by
`not_a_server_error`). The one difference: a 400 is accepted when its body is the
documented validation envelope and every field it names is a rejection no JSON Schema can
express, listed in SEMANTIC_400 with its reasons. Any other 400 (a field the schema should
have described: a bound, a pattern, an enum) still fails, and `response_schema_conformance`
still checks every 400, 404 and 409 body against the envelope.
"""

import re
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import schemathesis
from schemathesis import Case, CheckContext, Response
from schemathesis.specs.openapi.checks import is_unexpected_http_status_case

ACCEPTED = {401, 403, 404, 409, 413, 429}

# field path (a full match) -> the reasons that are semantic for it
SEMANTIC_400: list[tuple[re.Pattern[str], frozenset[str]]] = [
    (re.compile(pattern), frozenset(reasons))
    for pattern, reasons in [
        # The audience must exist in the key's organization (api.md: 400 audience: not_found);
        # a slug the schema cannot enumerate.
        (r"audience", {"not_found"}),
        # Conditional requirements: `category_tag` needs `audience` and `client` (transactional
        # send); a campaign or template needs `html_body` or `text_body` (either may be null).
        (r"audience|client", {"required"}),
        (r"html_body|text_body", {"required"}),
        # A page token is opaque: only one the API issued (`next_cursor`) decodes.
        (r"cursor", {"invalid"}),
        # Tag names are slugified (NFKD, ASCII, Django's slugify): whether a name leaves any
        # letter or digit, and how long its slug is, is beyond a pattern.
        (
            r"tags(\.\d+)?|include_tags\.\d+|exclude_tags\.\d+|category_tag|category_tags|"
            r"categories\.\d+\.tag|slug",
            {"invalid", "too_long"},
        ),
        # A mailbox may carry a display name (`Ada <ada@example.com>`): no format says that.
        (r"reply_to|cc\.\d+|bcc\.\d+|senders\.\d+\.email", {"invalid"}),
        # Items unique by one of their properties (uniqueItems compares whole items).
        (r"required_context\.\d+|senders\.\d+\.id|endpoints\.\d+\.url", {"duplicate"}),
        # Extra headers: a reserved name (From, To, Subject...), one name twice in another case,
        # a value with a format character (Unicode category Cf: no pattern lists them).
        (r"headers\..*", {"reserved", "duplicate", "invalid"}),
        # References to the client's own configuration (sender ids).
        (r"from_email|default_sender_id", {"not_configured", "not_found"}),
        # A variable the template requires (`required_context`) missing from `context`.
        (r"context\.[A-Za-z_][A-Za-z0-9_.]*", {"required"}),
        # A template part must compile (`{{ x` does not): a language, not a pattern.
        (r"subject|preview_text|html_body|text_body", {"invalid_template"}),
        # Free JSON objects: no NUL or unpaired surrogate in any nested string (PostgreSQL
        # cannot store them), at most 32 levels and 64 KiB as JSON; no schema reaches that.
        (r"context|metadata|example_context", {"invalid", "too_deep", "too_large"}),
        # The CSV upload is `format: binary`: being UTF-8 CSV with an email header is its content.
        (r"csv", {"must_be_utf8", "invalid", "missing_header"}),
        # At most 10 form fields besides the file: schemathesis sends an array-valued extra
        # property as repeated parts, which maxProperties cannot count (the only multipart
        # operation; the parts it builds are otherwise well formed).
        (r"body", {"invalid_multipart"}),
        # Webhook receivers: HTTPS (HTTP only to localhost outside production), a host, no
        # credentials or fragment: a URL check, not a pattern.
        (r"endpoints\.\d+\.url", {"invalid", "https_required", "credentials_not_allowed"}),
    ]
]


def _semantic(fields: dict[str, str]) -> bool:
    return bool(fields) and all(
        any(pattern.fullmatch(name) and reason in reasons for pattern, reasons in SEMANTIC_400)
        for name, reason in fields.items()
    )


def _conforms(case: Case) -> bool:
    """Whether the request is what the schema calls valid. Schemathesis sometimes sends
    more than it generated from the schema: a value a stateful link took from a response
    (an erased contact's `erased-1@invalid`) or a property's example borrowed from another
    operation by name (a sender's `Support <support@example.com>` as a recipient). Such a
    request says nothing about the schema's honesty; only the JSON body and the string
    query and path values are checked (the rest is generated from the schema)."""
    raw: dict[str, Any] = case.operation.schema.raw_schema
    definition = case.operation.definition.raw
    checks: list[tuple[Any, Any]] = []
    for param in definition.get("parameters", []):
        values = {"query": case.query, "path": case.path_parameters}.get(param.get("in"))
        value = (values or {}).get(param.get("name"))
        if isinstance(value, str):
            checks.append((value, param.get("schema", {})))
    content = definition.get("requestBody", {}).get("content", {})
    if "application/json" in content and case.media_type == "application/json" and case.body is not None:
        checks.append((case.body, content["application/json"].get("schema", {})))
    for value, schema in checks:
        validator = jsonschema.Draft202012Validator(
            {**schema, "components": raw.get("components", {})}, format_checker=jsonschema.FormatChecker()
        )
        if not validator.is_valid(value):
            return False
    return True


def _envelope_fields(response: Response) -> dict[str, str] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or error.get("code") != "validation_error":
        return None
    fields = error.get("fields")
    if not isinstance(fields, dict) or not all(isinstance(v, str) for v in fields.values()):
        return None
    return fields


@schemathesis.check
def positive_data_accepted(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    meta = case.meta
    # As the built-in check: coverage probes of the request's shape (an unexpected method...)
    # are not data.
    if meta is None or not meta.generation.mode.is_positive or is_unexpected_http_status_case(case):
        return None
    # A stateful link can carry a null id into a path (the `contact_id` of an address that
    # has no contact, the `message_id` of a test send): that is no schema-valid request.
    if any(value is None for value in (case.path_parameters or {}).values()):
        return None
    status = response.status_code
    if status < 400 or status >= 500 or status in ACCEPTED:
        return None
    fields = _envelope_fields(response) if status == 400 else None
    if (fields is not None and _semantic(fields)) or not _conforms(case):
        return None
    raise AssertionError(
        f"Valid data should have been accepted: {status} "
        f"{fields if fields is not None else response.text[:300]}"
    )
