"""Training jobs (issue 16): `lookalike train` over HTTP, in the background, with progress.

The labels file is a server-side path and is read only under an allowed root (like index jobs).
Jobs are kept in memory; one training runs at a time per process (training uses every core)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from ...errors import LookalikeError, NotPermitted
from ..errors import WRITE_ERRORS, ApiError, error_responses
from ..params import CollectionName, JobId
from ..state import ServiceState, require_key, service

router = APIRouter(tags=["train"])
KEEP_JOBS = 20
_jobs: dict[str, TrainJob] = {}
_lock = threading.Lock()
_one_at_a_time = threading.Lock()


class TrainRequest(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                      description="the trained model's name (then usable as `model`)")
    labels: str | None = Field(None, min_length=1, max_length=4096,
                               description="server-side CSV (image,label) or class folder, under an allowed root")
    self_supervised: bool = Field(False, description="learn without labels")
    force: bool = False
    resume: bool = False
    dim: int | None = Field(None, ge=64, le=1024)
    epochs: int | None = Field(None, ge=1, le=10_000)
    loss: Literal["supcon", "cosface", "nt-xent"] | None = None
    views: int | None = Field(None, ge=1, le=64)


class TrainJob:
    def __init__(self, collection: str, request: TrainRequest) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.collection, self.name = collection, request.name
        self.state, self.stage, self.done, self.total = "queued", "queued", 0, None
        self.info: dict[str, Any] = {}
        self.created, self.finished = time.time(), None
        self.result: dict[str, Any] | None = None
        self.error: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "collection": self.collection, "name": self.name, "state": self.state,
                "stage": self.stage, "done": self.done, "total": self.total,
                "progress": round(self.done / self.total, 4) if self.total else (1.0 if self.state == "done" else 0.0),
                **self.info, "created": self.created, "finished": self.finished, "result": self.result,
                "error": self.error}


def _run(state: ServiceState, job: TrainJob, request: TrainRequest, labels: str | None) -> None:
    def progress(event: dict[str, Any]) -> None:
        job.stage, job.done, job.total = event["stage"], event["done"], event["total"]
        job.info = {k: event[k] for k in ("epoch", "epochs", "loss", "validation", "best") if k in event}

    with _one_at_a_time:
        job.state = "running"
        try:
            params = {k: v for k, v in {"dim": request.dim, "epochs": request.epochs, "loss": request.loss,
                                        "views": request.views}.items() if v is not None}
            job.result = state.lib.train(request.name, job.collection, labels=labels,
                                         self_supervised=request.self_supervised, force=request.force,
                                         resume=request.resume, progress=progress, **params)
            job.state, job.stage, job.done, job.total = "done", "done", 1, 1
        except LookalikeError as exc:
            job.state, job.error = "failed", {"error": exc.code, "message": str(exc)}
        except Exception as exc:  # noqa: BLE001 - reported in the job, never lost in a thread
            job.state, job.error = "failed", {"error": "internal", "message": f"{type(exc).__name__}: {exc}"}
    job.finished = time.time()


@router.post("/api/collections/{collection}/train", status_code=202, dependencies=[Depends(require_key)],
             summary="Train a model on a collection's pictures in the background (poll its url)",
             responses=error_responses(*WRITE_ERRORS, 400, 404))
def start_train(collection: CollectionName, body: TrainRequest,
                state: ServiceState = Depends(service)) -> dict[str, Any]:
    state.lib.info(collection)  # 404 now for an unknown collection
    if (body.labels is None) == (not body.self_supervised):
        raise ApiError(400, "bad-request", "give `labels` (a server-side CSV or folder) or `self_supervised: true`")
    labels = None
    if body.labels is not None:
        if not state.settings.allowed_roots:
            raise NotPermitted("labels are read from server-side files only under allowed roots, and none are set")
        labels = state.lib.allowed_paths([body.labels], state.settings.allowed_roots)[0]
    job = TrainJob(collection, body)
    with _lock:
        finished = sorted((j for j in _jobs.values() if j.state in ("done", "failed")), key=lambda j: j.created)
        for old in finished[:max(0, len(finished) - KEEP_JOBS + 1)]:
            _jobs.pop(old.id, None)
        _jobs[job.id] = job
    threading.Thread(target=_run, args=(state, job, body, labels), name=f"train-{job.id}", daemon=True).start()
    return {**job.to_dict(), "url": f"/api/train/{job.id}"}


@router.get("/api/train/{job_id}", summary="A training job's state, progress and (when done) its model card",
            responses=error_responses(404))
def get_train(job_id: JobId) -> dict[str, Any]:
    job = _jobs.get(job_id)
    if job is None:
        raise ApiError(404, "unknown-job", f"no training job '{job_id}' (jobs are kept in memory until restart)")
    return job.to_dict()
