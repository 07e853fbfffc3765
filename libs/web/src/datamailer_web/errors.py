"""One renderer for every error: domain errors, request validation and routing errors all
leave as the JSON envelope `{"error": {"code", "message", "fields"}}`."""

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.routing import Match

from datamailer_core.errors import DatamailerError

_REASONS = {
    "missing": "required",
    "string_too_long": "too_long",
    "too_long": "too_long",
    "string_too_short": "too_short",
    "too_short": "too_short",
    "extra_forbidden": "unknown_field",
    "json_invalid": "invalid_json",
    "too_deep": "too_deep",
    "too_large": "too_large",
    "timezone_aware": "timezone_required",
}
_OBJECT_ERRORS = {"model_attributes_type", "dict_type", "model_type"}
_STATUS_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_body(code: str, message: str, fields: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or {}, **extra}}


def _is_json(request: Request) -> bool:
    """A body without a Content-Type is not taken for JSON (FastAPI does not parse it)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))


def _path(loc: Sequence[int | str]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "form", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_fields(errors: Sequence[Any]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for err in errors:
        loc = tuple(err.get("loc", ()))
        kind = err.get("type", "")
        if kind == "json_invalid":
            fields["body"] = "invalid_json"
        elif loc == ("body",) and kind in _OBJECT_ERRORS:
            fields["body"] = "must_be_object"
        else:
            fields.setdefault(_path(loc), _REASONS.get(kind, "invalid"))
    return fields


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DatamailerError)
    headers = {"Retry-After": str(exc.extra["retry_after"])} if "retry_after" in exc.extra else None
    extra = {k: v for k, v in exc.extra.items() if k != "retry_after"}
    return JSONResponse(error_body(exc.code, exc.message, exc.fields, **extra), exc.status, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    # A body sent as anything but JSON (or with no Content-Type) reaches validation as raw
    # bytes; an absent body is only `missing`, whatever the headers say.
    sent = [e for e in errors if tuple(e.get("loc", ()))[:1] == ("body",) and e.get("type") != "missing"]
    if sent and not _is_json(request) and "multipart" not in request.headers.get("content-type", ""):
        return JSONResponse(
            error_body("unsupported_media_type", "send application/json", {"body": "unsupported_media_type"}),
            415,
        )
    return JSONResponse(error_body("validation_error", "invalid request", validation_fields(errors)), 400)


def _unparsable_body(exc: StarletteHTTPException) -> JSONResponse | None:
    """A 400 HTTPException is the framework's word that the body could not be parsed: JSON
    the decoder gives up on (nesting past the recursion limit, an integer over Python's
    digit limit) or a malformed multipart body. Both are validation errors of `body`."""
    if exc.status_code != 400:
        return None
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, MultiPartException):
        return JSONResponse(error_body("validation_error", cause.message, {"body": "invalid_multipart"}), 400)
    return JSONResponse(error_body("validation_error", "invalid request", {"body": "invalid_json"}), 400)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if (unparsable := _unparsable_body(exc)) is not None:
        return unparsable
    code = _STATUS_CODES.get(exc.status_code, "error")
    extra: dict[str, Any] = {}
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        allowed = _allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        extra["allowed_methods"] = allowed
    message = exc.detail if isinstance(exc.detail, str) else code
    fields = {"body": "too_large"} if exc.status_code == 413 else None
    return JSONResponse(error_body(code, message, fields, **extra), exc.status_code, headers=headers or None)


def _allowed_methods(request: Request) -> list[str]:
    """Every method any route serves at this path (Starlette names only the first match)."""
    return [
        method
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.router.routes
        )
    ]


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Reached only by a bug: never leak internals, always answer in the envelope.
    return JSONResponse(error_body("internal_error", "internal error"), 500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DatamailerError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "required": ["code", "message", "fields"],
        }
    },
    "required": ["error"],
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI declarations of the envelope for the given statuses."""
    descriptions = {
        400: "Validation error",
        401: "Missing or invalid API key",
        403: "Outside the key's scope",
        404: "Not found",
        409: "Conflict",
        413: "Body too large",
        415: "Unsupported content type",
        429: "Rate limited",
    }
    return {
        s: {
            "description": descriptions.get(s, "Error"),
            "content": {"application/json": {"schema": ERROR_SCHEMA}},
        }
        for s in statuses
    }
