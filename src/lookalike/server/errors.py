"""The one place errors become HTTP answers: `{"error": "<code>", "message": "<one line>", ...}`.

Library errors carry a class (-> status) and a code (-> `error`); everything else is a 500 with no detail.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
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


class ErrorBody(BaseModel):
    """Every error answer's body (4xx and 5xx alike)."""

    model_config = ConfigDict(extra="allow")
    error: str = Field(description="stable machine-readable code, e.g. 'unknown-collection'")
    message: str = Field(description="one line: what is wrong and what to do")


_MEANING = {400: "Bad request (a rule the schema can't express, e.g. two queries at once)",
            401: "No API key given (write routes, when the server has one)", 403: "Wrong API key, or not allowed",
            404: "The collection, image, job or file named does not exist", 409: "Conflicts with the current state",
            413: "Body or image too large", 415: "Not an image / unsupported content type",
            422: "Invalid parameters, or an image that cannot be decoded",
            503: "Busy or not ready: retry after the Retry-After seconds"}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses a route can answer, all with the one error body."""
    return {status: {"model": ErrorBody, "description": _MEANING[status]} for status in sorted({*statuses, 422})}


WRITE_ERRORS = (401, 403, 413)  # what any write route can answer before its handler runs


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
        if exc.status_code == 400 and code == "error":  # FastAPI's own "error parsing the body"
            return json_error(422, "invalid-request", f"the request body cannot be parsed ({exc.detail}); "
                                                      "send the JSON or form the schema at /docs describes")
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # every method the path has, not only the first matching route's
            headers["Allow"] = ", ".join(sorted(_methods_of(app, request)))
        return json_error(exc.status_code, code, str(exc.detail), headers=headers or None, **extra)

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


def _methods_of(app: FastAPI, request: Request) -> set[str]:
    """The methods of every route whose path matches, through included routers (they have no prefix here)."""
    def walk(routes: list[Any]) -> Iterator[Any]:
        for route in routes:
            inner = getattr(route, "original_router", None)
            yield from walk(inner.routes) if inner is not None else [route]

    path = request.url.path
    methods: set[str] = set()
    for route in walk(app.router.routes):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods |= set(getattr(route, "methods", None) or ())
    return methods or {"GET"}
