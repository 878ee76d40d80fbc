"""ASGI middleware: request body limits (before any handler reads a byte), and per-request observation
(request id, Prometheus counts and latencies, one structured log line)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.routing import Match

from .errors import ApiError, json_error
from .settings import ServerSettings
from .state import ServiceState, key_refusal, require_key

log = logging.getLogger("lookalike.server")
DRAIN_CAP = 256 * 1024 * 1024  # bodies over the limit but under this are read and dropped before the 413


async def _drain(receive: Callable[[], Awaitable[dict[str, Any]]], *, more: bool, received: int = 0) -> None:
    while more and received <= DRAIN_CAP:
        msg = await receive()
        if msg["type"] != "http.request":
            return
        received += len(msg.get("body", b""))
        more = msg.get("more_body", False)


class BodyLimit:
    """Refuse request bodies over the limit: by Content-Length up front, else while streaming."""

    def __init__(self, app: Any, settings: ServerSettings) -> None:
        self.app = app
        self.bulk = re.compile(r"^/api/collections/[^/]+/images/bulk/?$")
        self.settings = settings

    def limit_for(self, path: str) -> int:
        if self.bulk.match(path):
            return self.settings.max_bulk_bytes
        # room for base64 JSON (4/3) and multipart framing around one image
        return self.settings.max_upload_bytes * 4 // 3 + 1024 * 1024

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        message = (f"request body is over the {limit} byte limit for a bulk upload" if self.bulk.match(scope["path"])
                   else f"request body is too large: an image may be up to {self.settings.max_upload_bytes} bytes")
        if length is not None and length.isdigit() and int(length) > limit:
            if int(length) <= DRAIN_CAP:  # read and drop the body, so the client gets to read the answer
                await _drain(receive, more=True)
            await json_error(413, "too-large", message, headers={"Connection": "close"})(scope, receive, send)
            return
        received = 0

        async def limited() -> dict[str, Any]:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    await _drain(receive, more=msg.get("more_body", False), received=received)
                    raise ApiError(413, "too-large", message)
            return msg

        await self.app(scope, limited, send)


class KeyFirst:
    """The API key of write routes is checked here, before the body is read or validated, so a client
    without the key gets 401 (or 403), never a 413 or 422 about a body it may not send. Which routes need
    it is read from the routes themselves (a `require_key` dependency), so a new route needs no change here."""

    def __init__(self, app: Any, state: ServiceState) -> None:
        self.app = app
        self.state = state
        self._needs: dict[int, bool] = {}

    def needs_key(self, route: Any) -> bool:
        if id(route) not in self._needs:
            pending, found = [getattr(route, "dependant", None)], False
            while pending and not found:
                dependant = pending.pop()
                if dependant is None:
                    continue
                found = dependant.call is require_key
                pending.extend(dependant.dependencies)
            self._needs[id(route)] = found
        return self._needs[id(route)]

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http" or not self.state.settings.api_key or "app" not in scope:
            await self.app(scope, receive, send)
            return
        route = _matching_route(scope["app"].router.routes, scope)
        if route is not None and self.needs_key(route):
            refused = key_refusal(Headers(scope=scope), self.state.settings.api_key)
            if refused is not None:
                scope["route"] = route  # for the request's metrics and log line
                length = dict(scope.get("headers") or []).get(b"content-length", b"")
                if not length.isdigit() or int(length) <= DRAIN_CAP:
                    await _drain(receive, more=True)
                await json_error(refused.status_code, refused.code, str(refused.detail))(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _matching_route(routes: list[Any], scope: dict[str, Any]) -> Any:
    """The endpoint route a request goes to (looking inside included routers, which newer FastAPI keeps
    whole), or None."""
    for route in routes:
        match, _ = route.matches(scope)
        if match != Match.FULL:
            continue
        inner = getattr(route, "original_router", None)
        if inner is None:
            return route
        found = _matching_route(inner.routes, scope)
        if found is not None:
            return found
    return None


class Observe:
    """Request id, Prometheus counts and latencies, and one structured log line per request."""

    def __init__(self, app: Any, state: ServiceState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")[:64] \
            or uuid.uuid4().hex[:16]
        status = 500

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or (
                "/static" if scope["path"].startswith("/static/") else "unmatched")
            self.state.metrics.observe(scope["method"], template, status, seconds)
            if template not in ("/healthz", "/readyz", "/metrics"):
                client = scope.get("client")
                log.info("request", extra={
                    "method": scope["method"], "path": scope["path"], "route": template, "status": status,
                    "ms": round(seconds * 1000, 2), "request_id": request_id,
                    "client": client[0] if client else None})


