"""Images of a collection: add (one or many uploads), count, get, update, replace, delete, thumbnail, file."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field

from ...library import Upload
from ..errors import WRITE_ERRORS, ApiError, error_responses
from ..params import CollectionName, ImageId, metadata_json, split_tags
from ..state import ServiceState, require_key, service

router = APIRouter(tags=["images"])
write = [Depends(require_key)]
IMAGE = "/api/collections/{collection}/images/{image_id:image_id}"  # params.ImageIdConvertor: never "count"
UPLOAD_ERRORS = (400, 409, 413, 415, 503)  # bad metadata or ids, another model, too large, not an image, busy


class MetadataUpdate(BaseModel):
    group_id: str | None = Field(None, max_length=256)
    tags: list[Annotated[str, Field(max_length=256)]] | None = Field(None, max_length=100,
                                                                     description="Replaces the image's tags")
    metadata: dict[str, Any] | None = Field(None, description="Merged into the image's metadata")


def _read(upload: UploadFile, limit: int) -> bytes:
    """At most one byte over the limit, so the library can refuse an oversized upload without reading it all."""
    return upload.file.read(limit + 1)


@router.post("/api/collections/{collection}/images", status_code=201, dependencies=write,
             summary="Add one uploaded image (re-using an id replaces that image)",
             responses=error_responses(*WRITE_ERRORS, *UPLOAD_ERRORS))
def add_image(collection: CollectionName, file: UploadFile = File(..., description="the image"),
              id: str | None = Form(None, description="your id for it (default: content hash)"),
              group_id: str | None = Form(None), tags: list[str] | None = Form(None),
              metadata: str | None = Form(None, description="JSON object"),
              state: ServiceState = Depends(service)) -> dict[str, Any]:
    record = state.lib.add_image(_read(file, state.limits.max_bytes), collection, name=id or None,
                                 group_id=group_id, tags=split_tags(tags), metadata=metadata_json(metadata),
                                 limits=state.limits)
    return state.record_out(collection, record)


@router.post("/api/collections/{collection}/images/bulk", status_code=201, dependencies=write,
             summary="Add many uploaded images in one all-or-nothing write",
             responses=error_responses(*WRITE_ERRORS, *UPLOAD_ERRORS))
def add_bulk(collection: CollectionName, files: list[UploadFile] = File(...),
             ids: list[str] | None = Form(None, description="one per file, in order (optional)"),
             group_id: str | None = Form(None), tags: list[str] | None = Form(None),
             metadata: str | None = Form(None), state: ServiceState = Depends(service)) -> dict[str, Any]:
    if ids and len(ids) != len(files):
        raise ApiError(400, "bad-request", f"{len(ids)} ids for {len(files)} files; give one per file or none")
    uploads = [Upload(_read(f, state.limits.max_bytes), (ids[i] or None) if ids else None)
               for i, f in enumerate(files)]
    records = state.lib.add_images(uploads, collection, group_id=group_id, tags=split_tags(tags),
                                   metadata=metadata_json(metadata), limits=state.limits)
    return {"collection": collection, "added": len(records),
            "images": [state.record_out(collection, r) for r in records]}


@router.get("/api/collections/{collection}/images/count", summary="Number of images",
            responses=error_responses(404))
def count_images(collection: CollectionName, state: ServiceState = Depends(service)) -> dict[str, Any]:
    return {"collection": collection, "count": state.lib.count(collection)}


@router.get(IMAGE, summary="One image's record", responses=error_responses(404))
def get_image(collection: CollectionName, image_id: ImageId, state: ServiceState = Depends(service)) -> dict[str, Any]:
    return state.record_out(collection, state.lib.get_image(collection, image_id))


@router.patch(IMAGE, dependencies=write, summary="Update group id, tags (replaced) or metadata (merged)",
              responses=error_responses(*WRITE_ERRORS, 400, 404))
def update_image(collection: CollectionName, image_id: ImageId, body: MetadataUpdate,
                 state: ServiceState = Depends(service)) -> dict[str, Any]:
    record = state.lib.update_image(collection, image_id, group_id=body.group_id, tags=body.tags,
                                    metadata=body.metadata)
    return state.record_out(collection, record)


@router.put(IMAGE, dependencies=write, summary="Replace an image's picture, keeping its id",
            responses=error_responses(*WRITE_ERRORS, *UPLOAD_ERRORS, 404))
def replace_image(collection: CollectionName, image_id: ImageId, file: UploadFile = File(...),
                  group_id: str | None = Form(None), tags: list[str] | None = Form(None),
                  metadata: str | None = Form(None), state: ServiceState = Depends(service)) -> dict[str, Any]:
    record = state.lib.replace_image(collection, image_id, _read(file, state.limits.max_bytes), group_id=group_id,
                                     tags=split_tags(tags) if tags is not None else None,
                                     metadata=metadata_json(metadata) if metadata else None, limits=state.limits)
    return state.record_out(collection, record)


@router.delete(IMAGE, dependencies=write, summary="Delete an image", responses=error_responses(*WRITE_ERRORS, 404))
def delete_image(collection: CollectionName, image_id: ImageId,
                 state: ServiceState = Depends(service)) -> dict[str, Any]:
    state.lib.get_image(collection, image_id)
    removed = state.lib.remove([image_id], collection)
    return {"collection": collection, "removed": removed, "id": image_id}


@router.get(IMAGE + "/thumbnail", response_class=Response, summary="A JPEG thumbnail (only of catalogued images)",
            responses={200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
                       304: {"description": "Not modified (If-None-Match)"},
                       **error_responses(404, 409, 413, 415, 503)})
def thumbnail(request: Request, collection: CollectionName, image_id: ImageId,
              size: int = Query(0, ge=0, le=1024, description="longest side; 0: server default"),
              state: ServiceState = Depends(service)) -> Response:
    size = size or state.settings.thumbnail_size
    data, digest = state.lib.thumbnail(collection, image_id, max(16, size))
    etag = f'"{digest[:20]}-{size}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=3600"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="image/jpeg", headers=headers)


@router.get(IMAGE + "/file", response_class=Response, summary="The original image bytes (only of catalogued images)",
            responses={200: {"content": {t: {"schema": {"type": "string", "format": "binary"}} for t in
                                         ("image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp",
                                          "image/tiff", "image/heif")}},
                       **error_responses(404, 409, 415)})
def original(collection: CollectionName, image_id: ImageId, state: ServiceState = Depends(service)) -> Response:
    data, media_type = state.lib.image_bytes(collection, image_id)
    if media_type is None:
        raise ApiError(415, "not-an-image", f"image {image_id} is stored in a format browsers cannot show; "
                                            "use its thumbnail")
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=3600",
                                                          "X-Content-Type-Options": "nosniff"})
