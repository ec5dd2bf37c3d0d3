"""API errors in OpenAI's JSON shape: `{"error": {"message", "type", "param", "code"}}` with an HTTP status.

Every failure a client can cause is raised as an `APIError` with the status it deserves (400 bad input, 401, 404
unknown model, 413, 429 queue full, 503 shutting down, 504 timed out); only our own bugs become 500.
"""

from __future__ import annotations

from typing import Any

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          500: "server_error", 503: "service_unavailable", 504: "timeout"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def is_small_int(text: str, digits: int = 10) -> bool:
    """An ASCII decimal integer of at most `digits` digits (str.isdigit also takes '²', which int() refuses)."""
    return text.isascii() and text.isdecimal() and len(text) <= digits
