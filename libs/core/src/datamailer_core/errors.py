"""The domain error hierarchy. Each error carries the code, HTTP status and field reasons
of the API error envelope; the services render it, core never imports a web framework."""

from collections.abc import Mapping


class DatamailerError(Exception):
    status: int = 400
    code: str = "error"

    def __init__(
        self,
        message: str | None = None,
        *,
        fields: Mapping[str, str] | None = None,
        code: str | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        self.message = message or self.code.replace("_", " ")
        self.fields = dict(fields or {})
        if code is not None:
            self.code = code
        self.extra = dict(extra or {})
        super().__init__(self.message)


class ValidationFailed(DatamailerError):
    status = 400
    code = "validation_error"


class Unauthorized(DatamailerError):
    status = 401
    code = "unauthorized"


class Forbidden(DatamailerError):
    status = 403
    code = "forbidden"


class NotFound(DatamailerError):
    status = 404
    code = "not_found"


class Conflict(DatamailerError):
    status = 409
    code = "conflict"


class PayloadTooLarge(DatamailerError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(DatamailerError):
    status = 415
    code = "unsupported_media_type"


class RateLimited(DatamailerError):
    status = 429
    code = "rate_limited"
