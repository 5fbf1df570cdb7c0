"""The service's error vocabulary: raised in the core, rendered once at the HTTP edge."""

from __future__ import annotations

from typing import Literal

ErrorCode = Literal[
    "invalid_image",
    "unsupported_media_type",
    "bad_dimensions",
    "too_large",
    "preprocessing_failed",
    "malformed_multipart",
    "invalid_request",
    "unauthorized",
    "admin_disabled",
    "not_found",
    "method_not_allowed",
    "invalid_model",
    "model_not_found",
    "service_not_ready",
    "overloaded",
    "timeout",
    "training_unavailable",
    "internal_error",
]

# The original service's status codes; the bot switches on `code`, clients on the status.
STATUS: dict[ErrorCode, int] = {
    "invalid_image": 400,
    "unsupported_media_type": 415,
    "bad_dimensions": 400,
    "too_large": 413,
    "preprocessing_failed": 400,
    "malformed_multipart": 400,
    "invalid_request": 400,
    "unauthorized": 401,
    "admin_disabled": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "invalid_model": 400,
    "model_not_found": 404,
    "service_not_ready": 503,
    "overloaded": 503,
    "timeout": 504,
    "training_unavailable": 503,
    "internal_error": 500,
}


class HandaiError(Exception):
    """An expected failure with a stable code and a message a person can act on."""

    def __init__(self, code: ErrorCode, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.retry_after_s = retry_after_s  # for 503s: when trying again makes sense

    @property
    def status(self) -> int:
        return STATUS[self.code]

    def __reduce__(self) -> tuple[type[HandaiError], tuple[ErrorCode, str, int | None]]:
        # Ray pickles exceptions across processes; keep every field intact.
        return (type(self), (self.code, self.message, self.retry_after_s))
