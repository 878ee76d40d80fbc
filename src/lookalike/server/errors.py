"""The one place errors become HTTP answers: `{"error": "<code>", "message": "<one line>", ...}`.

Library errors carry a class (-> status) and a code (-> `error`); everything else is a 500 with no detail.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    AlreadyExists,
    Busy,
    DecodeError,
    EmptyLibrary,
    FileChanged,
    LookalikeError,
    ModelMismatch,
    NotFound,
    NotPermitted,
    UnknownCollection,
    UnknownImage,
)

log = logging.getLogger("lookalike.server")

_STATUS: list[tuple[type[LookalikeError], int]] = [
    (UnknownCollection, 404), (UnknownImage, 404), (NotFound, 404), (NotPermitted, 403),
    (ModelMismatch, 409), (EmptyLibrary, 409), (AlreadyExists, 409), (FileChanged, 409), (Busy, 503),
]
_DECODE_STATUS = {"not-an-image": 415, "too-large": 413, "empty": 400}  # other decode failures: 422


class ApiError(HTTPException):
    """An error of the HTTP layer itself (auth, body shape), rendered like a library error."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(status_code=status, detail=message)
        self.code = code
        self.extra = extra


def status_of(exc: LookalikeError) -> int:
    if isinstance(exc, DecodeError):
        return _DECODE_STATUS.get(exc.reason, 422)
    return next((status for cls, status in _STATUS if isinstance(exc, cls)), 400)


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None,
               **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or {404: "not-found", 405: "method-not-allowed"}.get(
            exc.status_code, "error")
        extra = getattr(exc, "extra", {})
        return json_error(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None), **extra)

    @app.exception_handler(LookalikeError)
    async def user_error(request: Request, exc: LookalikeError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Busy) else None
        return json_error(status_of(exc), exc.code, str(exc), headers=headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid")
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in errors]
        return json_error(422, "invalid-request", message, details=details)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return json_error(500, "internal", f"internal error ({type(exc).__name__}); see the server log")
