"""The service's error type and its JSON body `{"error": {"code", "message", "field"?, "index"?}}`."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class ApiError(Exception):
    """An error answered with `status` and a JSON error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        index: int | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.index = index
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return error_response(self.status, self.code, self.message, self.field, self.index, self.headers)


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    index: int | None = None,
    headers: dict | None = None,
) -> JSONResponse:
    """A JSON error response."""
    body: dict = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    if index is not None:
        body["index"] = index
    return JSONResponse({"error": body}, status_code=status, headers=headers or None)
