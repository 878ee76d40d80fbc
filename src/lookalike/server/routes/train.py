"""Training jobs (issue 16): `lookalike train` over HTTP, in the background, with progress.

The labels file is a server-side path and is read only under an allowed root (like index jobs).
Jobs live in the library's shared job table (`jobs_db.py`), so every server process answers for them;
one training runs at a time per library (training uses every core)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from ...errors import NotPermitted
from ..errors import WRITE_ERRORS, ApiError, error_responses
from ..jobs import Job
from ..params import CollectionName, JobId
from ..state import ServiceState, find_job, require_key, service

router = APIRouter(tags=["train"])


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
    options = {"name": body.name, "labels": labels, **body.model_dump(exclude={"name", "labels"})}
    job = state.train_jobs.submit(collection, [], options, stage="queued")
    return {**_view(job), "url": f"/api/train/{job.id}"}


@router.get("/api/train/{job_id}", summary="A training job's state, progress and (when done) its model card",
            responses=error_responses(404))
def get_train(job_id: JobId, state: ServiceState = Depends(service)) -> dict[str, Any]:
    return _view(find_job(state.train_jobs, job_id, "training"))


def _view(job: Job) -> dict[str, Any]:
    return job.task_view(name=job.options["name"])
