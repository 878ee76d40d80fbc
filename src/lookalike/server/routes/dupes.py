"""Copies in a collection: a background dupes job with progress, and "not duplicates" decisions."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from ...errors import LookalikeError
from ...names import MAX_IMAGE_ID
from ..errors import WRITE_ERRORS, ApiError, error_responses
from ..params import CollectionName, JobId
from ..state import ServiceState, require_key, service

router = APIRouter(tags=["dupes"])
KEEP_JOBS = 20  # finished dupes jobs kept in memory (their reports can be large)


class DupesJob:
    def __init__(self, collection: str) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.collection = collection
        self.state, self.stage, self.done, self.total = "running", "starting", 0, None
        self.created, self.finished = time.time(), None
        self.result: dict[str, Any] | None = None
        self.error: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "collection": self.collection, "state": self.state, "stage": self.stage,
                "done": self.done, "total": self.total,
                "progress": round(self.done / self.total, 4) if self.total else (1.0 if self.state == "done" else 0.0),
                "created": self.created, "finished": self.finished, "result": self.result, "error": self.error}


_jobs: dict[str, DupesJob] = {}
_lock = threading.Lock()


def _run(state: ServiceState, job: DupesJob) -> None:
    def progress(stage: str, done: int, total: int) -> None:
        job.stage, job.done, job.total = stage, done, total

    try:
        job.result = state.lib.dupes(job.collection, progress=progress).to_dict(keep="best")
        job.state = "done"
    except LookalikeError as exc:
        job.state, job.error = "failed", {"error": exc.code, "message": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported in the job, never lost in a thread
        job.state, job.error = "failed", {"error": "internal", "message": f"{type(exc).__name__}: {exc}"}
    job.finished = time.time()


@router.post("/api/collections/{collection}/dupes", status_code=202,
             summary="Find the groups of copies in a collection (a background job; poll its url)",
             responses=error_responses(404))
def start_dupes(collection: CollectionName, state: ServiceState = Depends(service)) -> dict[str, Any]:
    state.lib.info(collection)  # 404 now for an unknown collection
    job = DupesJob(collection)
    with _lock:
        finished = sorted((j for j in _jobs.values() if j.state != "running"), key=lambda j: j.created)
        for old in finished[:max(0, len(finished) - KEEP_JOBS + 1)]:
            _jobs.pop(old.id, None)
        _jobs[job.id] = job
    threading.Thread(target=_run, args=(state, job), name=f"dupes-{job.id}", daemon=True).start()
    return {**job.to_dict(), "url": f"/api/dupes/{job.id}"}


@router.get("/api/dupes/{job_id}", summary="A dupes job's state, progress and (when done) its groups",
            responses=error_responses(404))
def get_dupes(job_id: JobId) -> dict[str, Any]:
    job = _jobs.get(job_id)
    if job is None:
        raise ApiError(404, "unknown-job", f"no dupes job '{job_id}' (jobs are kept in memory until restart)")
    return job.to_dict()


class NotDuplicates(BaseModel):
    ids: list[Annotated[int, Field(ge=1, le=MAX_IMAGE_ID)]] = Field(min_length=2, max_length=100,
                                                                    description="indexed images' ids")


@router.post("/api/collections/{collection}/not-duplicates", dependencies=[Depends(require_key)],
             summary="Remember that these images are not copies of each other (never grouped again)",
             responses=error_responses(*WRITE_ERRORS, 404))
def not_duplicates(collection: CollectionName, body: NotDuplicates,
                   state: ServiceState = Depends(service)) -> dict[str, Any]:
    return {"collection": collection, "ids": body.ids,
            "new_pairs": state.lib.not_duplicates(list(body.ids), collection)}


class KeepOne(BaseModel):
    ids: list[Annotated[int, Field(ge=1, le=MAX_IMAGE_ID)]] = Field(min_length=2, max_length=100,
                                                                    description="the group's images' ids")
    keep: int = Field(ge=1, le=MAX_IMAGE_ID, description="the one to keep (one of `ids`)")
    apply: bool = Field(False, description="false: the plan only (nothing changes); true: do it")


@router.post("/api/collections/{collection}/dupes/keep", dependencies=[Depends(require_key)],
             summary="Keep one picture of a group of copies; the others go to the library's trash (undoable). "
                     "A dry run unless `apply`; applying needs the files inside the server's allowed roots",
             responses=error_responses(*WRITE_ERRORS, 400, 404))
def keep_one(collection: CollectionName, body: KeepOne, state: ServiceState = Depends(service)) -> dict[str, Any]:
    plan = state.lib.dupes_keep(collection, list(body.ids), body.keep, apply=body.apply,
                                allowed_roots=list(state.settings.allowed_roots))
    return {"collection": collection, **plan.to_dict()}
