"""Index jobs: a server-side folder (under an allowed root) indexed in the background, with progress."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from ..errors import ApiError
from ..state import ServiceState, require_key, service

router = APIRouter(tags=["jobs"])


class IndexRequest(BaseModel):
    path: str | None = Field(None, description="A server-side folder or file under an allowed root")
    paths: list[str] = Field(default_factory=list)
    prune: bool = Field(False, description="Forget indexed files under the paths that no longer exist")
    group_id: str | None = None
    tags: list[str] = Field(default_factory=list)
    model: str | None = None
    index_spec: str = "auto"


@router.post("/api/collections/{collection}/index", status_code=202, dependencies=[Depends(require_key)],
             summary="Index a server-side folder (under an allowed root) in the background")
def start_index(collection: str, body: IndexRequest, state: ServiceState = Depends(service)) -> dict[str, Any]:
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


@router.get("/api/jobs/{job_id}", summary="An index job's state and progress")
def get_job(job_id: str, state: ServiceState = Depends(service)) -> dict[str, Any]:
    job = state.jobs.get(job_id)
    if job is None:
        raise ApiError(404, "unknown-job", f"no index job '{job_id}' (jobs are kept in memory until restart)")
    return job.to_dict()
