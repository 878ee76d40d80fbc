"""Index jobs: a server-side folder (under an allowed root) indexed in the background, with progress."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from ...names import MAX_SPEC
from ..errors import WRITE_ERRORS, ApiError, error_responses
from ..params import CollectionName, JobId
from ..state import ServiceState, find_job, require_key, service

router = APIRouter(tags=["jobs"])


class IndexRequest(BaseModel):
    path: str | None = Field(None, min_length=1, max_length=4096,
                             description="A server-side folder or file under an allowed root (absolute)")
    paths: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(default_factory=list,
                                                                               max_length=1000)
    prune: bool = Field(False, description="Forget indexed files under the paths that no longer exist")
    group_id: str | None = Field(None, max_length=256)
    tags: list[Annotated[str, Field(max_length=256)]] = Field(default_factory=list, max_length=100)
    model: str | None = Field(None, min_length=1, max_length=MAX_SPEC)
    index_spec: str = Field("auto", min_length=1, max_length=MAX_SPEC)


@router.post("/api/collections/{collection}/index", status_code=202, dependencies=[Depends(require_key)],
             summary="Index a server-side folder (under an allowed root) in the background",
             responses=error_responses(*WRITE_ERRORS, 400, 404, 409, 503))
def start_index(collection: CollectionName, body: IndexRequest,
                state: ServiceState = Depends(service)) -> dict[str, Any]:
    raw = ([body.path] if body.path else []) + list(body.paths)
    if not raw:
        raise ApiError(400, "bad-request", "give `path` (or `paths`): the server-side folder to index")
    paths = state.lib.allowed_paths(raw, state.settings.allowed_roots)
    if state.shutting_down:
        raise ApiError(503, "shutting-down", "the server is shutting down")
    job = state.jobs.submit(collection, paths, {"prune": body.prune, "group_id": body.group_id,
                                                "tags": body.tags, "model": body.model,
                                                "index_spec": body.index_spec})
    return {**job.to_dict(), "url": f"/api/jobs/{job.id}"}


@router.get("/api/jobs", summary="Index jobs, newest first")
def list_jobs(state: ServiceState = Depends(service)) -> dict[str, Any]:
    return {"jobs": [j.to_dict() for j in state.jobs.list()], "queued": state.jobs.queued,
            "running": state.jobs.running}


@router.get("/api/jobs/{job_id}", summary="An index job's state and progress", responses=error_responses(404))
def get_job(job_id: JobId, state: ServiceState = Depends(service)) -> dict[str, Any]:
    return find_job(state.jobs, job_id, "index").to_dict()
