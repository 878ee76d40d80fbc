"""What one running service holds besides the library: its settings, jobs (index, dupes, train), metrics,
readiness, and how records are shown in answers (with the URLs of their thumbnail and file)."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from ..errors import NotPermitted
from ..jobs_db import JobsDB
from ..library import Library, Limits
from ..store import CollectionInfo, ImageRecord
from ..uploads import UPLOAD_PREFIX
from .errors import ApiError
from .jobs import Job, JobManager, Progress
from .metrics import Metrics
from .settings import ServerSettings

log = logging.getLogger("lookalike.server")
KEEP_TASK_JOBS = 20  # finished dupes (and training) jobs the library keeps of each kind
TRAIN_DETAIL = ("epoch", "epochs", "loss", "validation", "best")  # a training's progress fields its job shows


class ServiceState:
    def __init__(self, library: Library, settings: ServerSettings, owns_library: bool) -> None:
        self.lib = library
        self.settings = settings
        self.owns_library = owns_library
        self.limits = Limits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_upload_pixels)
        # shared by every process serving this library; a job keeps the roots it was accepted under
        table = JobsDB(library.home / "jobs.sqlite")
        roots = {"roots": list(settings.allowed_roots)}
        self.jobs = JobManager(self._run_job, db=table, context=roots)
        self.dupes_jobs = JobManager(self._run_dupes, KEEP_TASK_JOBS, kind="dupes", immediate=True, db=table)
        # a training job's labels path is checked against the allowed roots when it is asked for
        self.train_jobs = JobManager(self._run_train, KEEP_TASK_JOBS, kind="train", db=table)
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

    @property
    def job_managers(self) -> tuple[JobManager, ...]:
        return self.jobs, self.dupes_jobs, self.train_jobs

    def start_jobs(self) -> None:
        for manager in self.job_managers:
            manager.start()

    def shutdown_jobs(self, timeout: float) -> None:
        """Cancel this process's jobs of every kind, waiting at most `timeout` seconds in all."""
        deadline = time.monotonic() + timeout
        for manager in self.job_managers:
            manager.shutdown(max(0.0, deadline - time.monotonic()))

    def _run_dupes(self, job: Job, progress: Progress) -> dict[str, Any]:
        report = self.lib.dupes(job.collection, progress=lambda stage, done, total: progress(done, total, stage))
        return report.to_dict(keep="best")

    def _run_train(self, job: Job, progress: Progress) -> dict[str, Any]:
        opts = job.options

        def step(event: dict[str, Any]) -> None:
            progress(event["done"], event["total"], event["stage"], {k: event[k] for k in TRAIN_DETAIL if k in event})

        params = {k: opts[k] for k in ("dim", "epochs", "loss", "views") if opts.get(k) is not None}
        result = self.lib.train(opts["name"], job.collection, labels=opts.get("labels"),
                                self_supervised=opts.get("self_supervised", False), force=opts.get("force", False),
                                resume=opts.get("resume", False), progress=step, **params)
        progress(1, 1, "done", {})
        return result

    def _run_job(self, job: Job, progress: Progress) -> dict[str, Any]:
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


def find_job(jobs: JobManager, job_id: str, what: str) -> Job:
    """The job `job_id` among `jobs` (of their kind), or 404 `unknown-job`."""
    job = jobs.get(job_id)
    if job is None:
        raise ApiError(404, "unknown-job", f"no {what} job '{job_id}' (the library keeps the last {jobs.keep})")
    return job


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
