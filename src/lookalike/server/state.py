"""What one running service holds besides the library: its settings, index jobs, metrics, readiness,
and how records are shown in answers (with the URLs of their thumbnail and file)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from ..errors import NotPermitted
from ..library import Library, Limits
from ..store import CollectionInfo, ImageRecord
from ..uploads import UPLOAD_PREFIX
from .errors import ApiError
from .jobs import Job, JobManager
from .metrics import Metrics
from .settings import ServerSettings

log = logging.getLogger("lookalike.server")


class ServiceState:
    def __init__(self, library: Library, settings: ServerSettings, owns_library: bool) -> None:
        self.lib = library
        self.settings = settings
        self.owns_library = owns_library
        self.limits = Limits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_upload_pixels)
        # shared by every process serving this library; a job keeps the roots it was accepted under
        self.jobs = JobManager(self._run_job, path=library.home / "jobs.sqlite",
                               context={"roots": list(settings.allowed_roots)})
        self.metrics = Metrics(library.collections, self.jobs)
        self.ready = False
        self.ready_error: str | None = None
        self.shutting_down = False

    def warm_up(self) -> None:
        """Load the models before the first request needs them; /readyz reports the outcome."""
        try:
            models = self.lib.warm_up()
            self.ready = True
            log.info("ready", extra={"models": models})
        except Exception as exc:  # noqa: BLE001 - reported by /readyz
            self.ready_error = str(exc) or type(exc).__name__
            log.error("warm-up failed", extra={"error": self.ready_error})

    def info_out(self, info: CollectionInfo) -> dict[str, Any]:
        data = info.to_dict()
        data["text"] = self.lib.has_text(info.model)
        return data

    def record_out(self, collection: str, record: ImageRecord, score: float | None = None,
                   rank: int | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if rank is not None:
            data["rank"] = rank
        data["id"] = record.id
        if score is not None:
            data["score"] = round(float(score), 6)
        data.update(record.to_dict())
        if record.path.startswith(UPLOAD_PREFIX):
            data["external_id"] = record.path[len(UPLOAD_PREFIX):]
        base = f"/api/collections/{collection}/images/{record.id}"
        data["thumbnail_url"] = base + "/thumbnail"
        data["image_url"] = base + "/file"
        return data

    def _run_job(self, job: Job, progress: Callable[[int, int], None]) -> dict[str, Any]:
        opts = job.options
        roots = opts.get("roots") or self.settings.allowed_roots
        if not roots:
            raise NotPermitted("server-side indexing is off: no allowed roots", code="indexing-disabled")
        report = self.lib.index(job.paths, job.collection, model=opts.get("model"), prune=opts.get("prune", False),
                                group_id=opts.get("group_id"), tags=opts.get("tags") or [],
                                index_spec=opts.get("index_spec", "auto"), progress=progress,
                                allowed_roots=roots, exclusive=False,  # the claim holds the collection's lock
                                engine="local")  # server jobs stay in-process whatever the `engine` setting
        data = report.to_dict()
        skipped = data.pop("skipped")
        data["skipped"] = skipped[:50]
        data["skipped_total"] = len(skipped)
        return data


def service(request: Request) -> ServiceState:
    """The running service, for route handlers (FastAPI dependency)."""
    return request.app.state.service


api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="Needed for writes when the server has LOOKALIKE_API_KEY set")


def require_key(request: Request, key: str | None = Security(api_key_header)) -> None:
    """Write routes' guard: the server's API key in X-API-Key (or `Authorization: Bearer`), if it has one."""
    refused = key_refusal(request.headers, service(request).settings.api_key)
    if refused is not None:
        raise refused


def key_refusal(headers: Any, expected: str) -> ApiError | None:
    """Why a request's headers don't carry the API key `expected` (401: none given, 403: wrong), or None.
    Also run by middleware.KeyFirst before the body is read."""
    import hmac

    if not expected:
        return None
    auth = headers.get("authorization", "")
    given = headers.get("x-api-key") or (auth[7:].strip() if auth.lower().startswith("bearer ") else "")
    if not given:
        return ApiError(401, "unauthorized", "this endpoint needs the server's API key in the X-API-Key header")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return ApiError(403, "forbidden", "the API key is wrong")
    return None
