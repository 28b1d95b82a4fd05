"""One error type carrying its HTTP status and stable code; one handler renders it."""

from __future__ import annotations


class ApiError(Exception):
    """An error a client sees as `{"error": message, "code": code}` with `status`."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.message, "code": self.code}


def bad_request(message: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, code, message)


def unauthorized() -> ApiError:
    return ApiError(401, "unauthorized", "Unauthorized", {"WWW-Authenticate": "Bearer"})


def not_found(message: str, code: str = "not_found") -> ApiError:
    return ApiError(404, code, message)


def unavailable(message: str = "database unavailable, retry shortly", retry_after: int = 2) -> ApiError:
    return ApiError(503, "service_unavailable", message, {"Retry-After": str(retry_after)})


class ImageError(Exception):
    """An image could not be fetched, decoded or accepted; the message says which and why."""

    def __init__(self, message: str, code: str = "invalid_image"):
        super().__init__(message)
        self.message = message
        self.code = code
