"""Copies in a collection: a background dupes job with progress, and "not duplicates" decisions."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from ...names import MAX_IMAGE_ID
from ..errors import WRITE_ERRORS, error_responses
from ..params import CollectionName, JobId
from ..state import ServiceState, find_job, require_key, service

router = APIRouter(tags=["dupes"])


@router.post("/api/collections/{collection}/dupes", status_code=202,
             summary="Find the groups of copies in a collection (a background job; poll its url)",
             responses=error_responses(404))
def start_dupes(collection: CollectionName, state: ServiceState = Depends(service)) -> dict[str, Any]:
    state.lib.info(collection)  # 404 now for an unknown collection
    job = state.dupes_jobs.submit(collection, [], {}, stage="starting")
    return {**job.task_view(), "url": f"/api/dupes/{job.id}"}


@router.get("/api/dupes/{job_id}", summary="A dupes job's state, progress and (when done) its groups",
            responses=error_responses(404))
def get_dupes(job_id: JobId, state: ServiceState = Depends(service)) -> dict[str, Any]:
    return find_job(state.dupes_jobs, job_id, "dupes").task_view()


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
