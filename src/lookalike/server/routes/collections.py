"""Collections: list, create, describe, drop."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from ...errors import AlreadyExists, UnknownCollection
from ...names import COLLECTION_NAME, MAX_SPEC
from ..errors import WRITE_ERRORS, error_responses
from ..params import CollectionName
from ..state import ServiceState, require_key, service

router = APIRouter(tags=["collections"])
write = [Depends(require_key)]


class CollectionCreate(BaseModel):
    name: str = Field(pattern=COLLECTION_NAME, max_length=64, description="1-64 letters, digits, '_' or '-'")
    model: str | None = Field(None, min_length=1, max_length=MAX_SPEC,
                              description="Embedder name (GET /api/models); default: the library's")
    index_spec: str = Field("auto", min_length=1, max_length=MAX_SPEC,
                            description="'auto', a Faiss index_factory string, e.g. 'HNSW32', or "
                                        "'LSH<bits>' (binary codes, exact re-rank), e.g. 'LSH256'")


@router.get("/api/collections", summary="List collections")
def list_collections(state: ServiceState = Depends(service)) -> dict[str, Any]:
    items = [state.info_out(c) for c in state.lib.collections()]
    return {"collections": items, "count": sum(c["count"] for c in items)}


@router.post("/api/collections", status_code=201, dependencies=write, summary="Create an empty collection",
             responses=error_responses(*WRITE_ERRORS, 400, 404, 409))
def create_collection(body: CollectionCreate, state: ServiceState = Depends(service)) -> dict[str, Any]:
    try:
        state.lib.info(body.name)
    except UnknownCollection:
        return state.info_out(state.lib.create_collection(body.name, body.model, body.index_spec))
    raise AlreadyExists(f"collection '{body.name}' already exists; drop it first or pick another name")


@router.get("/api/collections/{collection}", summary="Describe a collection: count, dim, model, index, size",
            responses=error_responses(404))
def describe_collection(collection: CollectionName, state: ServiceState = Depends(service)) -> dict[str, Any]:
    return state.info_out(state.lib.info(collection))


@router.delete("/api/collections/{collection}", dependencies=write, summary="Drop a collection and everything in it",
               responses=error_responses(*WRITE_ERRORS, 404))
def drop_collection(collection: CollectionName, state: ServiceState = Depends(service)) -> dict[str, Any]:
    return {"dropped": collection, "count": state.lib.drop_collection(collection)}
