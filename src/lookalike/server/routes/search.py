"""Search (by an upload, a raw image body, base64 JSON, text or an indexed id) and compare two images."""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile as StarletteUploadFile

from ...config import DEFAULT_COLLECTION
from ...names import COLLECTION_NAME, COLLECTION_NAME_RE, MAX_IMAGE_ID, MAX_SPEC, MAX_TEXT
from ..errors import ApiError, error_responses
from ..params import bool_param, int_param, search_filter
from ..state import ServiceState, service

router = APIRouter(tags=["search"])

ID = {"type": "integer", "minimum": 1, "maximum": MAX_IMAGE_ID}
NAME = {"type": "string", "pattern": COLLECTION_NAME, "maxLength": 64}
TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT}
SHORT = {"type": "string", "maxLength": 256}
_NUM = r"\s*\d{1,6}(\.\d{1,4})?\s*"
BOX = {"type": "string", "pattern": f"^{_NUM},{_NUM},{_NUM},{_NUM}$", "maxLength": 64,
       "examples": ["120,40,380,300"]}  # x0,y0,x1,y1 in pixels of the query picture (x1 > x0, y1 > y0)
BOX_ARRAY = {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1e6}, "minItems": 4, "maxItems": 4}
DEFAULT_MAX_K = 1000


def search_openapi() -> dict[str, Any]:
    """The search route's parameters and bodies as OpenAPI (the route reads the body itself, so that one
    endpoint takes multipart, raw image and JSON queries)."""
    k = {"type": "integer", "minimum": 1, "maximum": DEFAULT_MAX_K, "default": 10}
    return {
        "parameters": [
            {"name": n, "in": "query", "required": False, "schema": sch, "description": d} for n, sch, d in [
                ("k", k, "results to return"),
                ("collection", {**NAME, "default": DEFAULT_COLLECTION}, "collection to search"),
                ("id", ID, "more like this indexed image (instead of an upload)"),
                ("text", TEXT, "search by text (models with a text tower)"),
                ("min_score", {"type": "number"}, "drop results scoring below this"),
                ("expand", {"type": "boolean", "default": True},
                 "query expansion on the collection's refined index (false: plain cosine ranking)"),
                ("rotation_invariant", {"type": "boolean", "default": False},
                 "also find copies rotated by 90/180/270 degrees (embeds the query 4 times)"),
                ("copies", {"type": "boolean", "default": False},
                 "only images verified as copies of the query; score = copy confidence in [0, 1]"),
                ("objects", {"type": "boolean", "default": False},
                 "also search with each object/region found in the query picture; best region per image wins "
                 "(each result's `query_box` is the region that found it)"),
                ("box", BOX, "search with this region of the query picture only: x0,y0,x1,y1 in pixels, inside "
                 "the picture, x1 > x0 and y1 > y0 (else 400 bad-box)"),
                ("group_id", SHORT, "only images with this group id"),
                ("tag", {"type": "array", "items": SHORT, "maxItems": 100}, "only images carrying every tag"),
                ("where", {"type": "array", "items": {"type": "string", "pattern": "^[^=]+=.*$", "maxLength": 512},
                           "maxItems": 100}, "metadata KEY=VALUE (repeatable)"),
                ("under", {"type": "string", "maxLength": 4096}, "only images under this folder"),
            ]],
        "requestBody": {"required": False, "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "file": {"type": "string", "format": "binary"}, "k": k, "collection": NAME,
                "objects": {"type": "boolean"}, "box": BOX}}},
            "application/json": {"schema": {"type": "object", "properties": {
                "image_base64": {"type": "string", "contentEncoding": "base64"}, "text": TEXT, "id": ID, "k": k,
                "collection": NAME, "min_score": {"type": "number"}, "expand": {"type": "boolean"},
                "rotation_invariant": {"type": "boolean"}, "group_id": SHORT, "objects": {"type": "boolean"},
                "box": {"anyOf": [BOX, BOX_ARRAY]},
                "tags": {"type": "array", "items": SHORT, "maxItems": 100},
                "metadata": {"type": "object"}, "under": {"type": "string", "maxLength": 4096}}}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        }},
    }


def declare_max_k(schema: dict[str, Any], max_k: int) -> None:
    """Write a server's own limit on k into its (generated) schema."""
    operation = schema["paths"]["/api/search"]["post"]
    bodies = [c["schema"]["properties"] for c in operation["requestBody"]["content"].values()
              if "properties" in c.get("schema", {})]
    for where in [p["schema"] for p in operation["parameters"] if p["name"] == "k"] + [b["k"] for b in bodies]:
        where["maximum"] = max_k


async def _read_upload(upload: StarletteUploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "too-large", f"upload '{upload.filename}' is over the {limit} byte limit")
    return data


async def _request_params(request: Request, max_bytes: int) -> tuple[dict[str, Any], bytes | None]:
    """Every search parameter, from the query string and the body (form, JSON or raw image), and the image."""
    params: dict[str, Any] = {k: v for k, v in request.query_params.items()}
    params["tags"] = request.query_params.getlist("tag") + request.query_params.getlist("tags")
    params["where"] = request.query_params.getlist("where")
    if "collection" in params:  # checked even where the body names another one; empty is not a name either
        _check_collection(params["collection"], allow_empty=False)
    image: bytes | None = None
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form()
        try:
            for key, value in form.multi_items():
                if isinstance(value, StarletteUploadFile):
                    if key in ("file", "image"):
                        image = await _read_upload(value, max_bytes)
                elif key in ("tag", "tags"):
                    params["tags"].append(value)
                elif key == "where":
                    params["where"].append(value)
                else:
                    params[key] = value
        finally:
            await form.close()
    elif ctype == "application/json" or ctype.endswith("+json"):
        try:
            body = await request.json()
        except ValueError as exc:
            raise ApiError(400, "bad-json", f"the body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "bad-json", "the JSON body must be an object")
        filters = body.pop("filters", None)
        if isinstance(filters, dict):
            body.update(filters)
        encoded = body.pop("image_base64", None) or body.pop("image", None)
        if encoded is not None:
            if not isinstance(encoded, str):
                raise ApiError(400, "bad-base64", "image_base64 must be a base64 string")
            encoded = encoded.split(",", 1)[1] if encoded.startswith("data:") else encoded
            if len(encoded) > max_bytes * 4 // 3 + 8:
                raise ApiError(413, "too-large", f"image is over the {max_bytes} byte limit")
            try:
                image = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ApiError(400, "bad-base64", f"image_base64 is not valid base64: {exc}") from exc
        for key in ("tags", "tag", "where"):
            value = body.pop(key, None)
            if value is not None:
                params["tags" if key == "tag" else key] += value if isinstance(value, list) else [value]
        params.update(body)
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        image = await request.body()
    elif ctype:
        raise ApiError(415, "unsupported-content-type",
                       f"send multipart/form-data (field `file`), an image body, or JSON, not {ctype}")
    if "group" in params and "group_id" not in params:
        params["group_id"] = params["group"]
    _check_collection(params.get("collection"))
    return params, image


def _check_collection(name: Any, *, allow_empty: bool = True) -> None:
    if (name is None or name == "") and allow_empty:
        return
    if not (isinstance(name, str) and COLLECTION_NAME_RE.match(name)):
        raise ApiError(422, "bad-parameter", f"collection {str(name)[:80]!r} is not a collection name: "
                       "use 1-64 letters, digits, '_' or '-', starting with a letter or digit")


async def search(request: Request) -> JSONResponse:
    state: ServiceState = service(request)
    params, image = await _request_params(request, state.settings.max_upload_bytes)
    k = int_param(params, "k", 10, 1, state.settings.max_k) or 10
    image_id = int_param(params, "id", None, 1, MAX_IMAGE_ID)
    text = params.get("text") or None
    if text is not None and (not isinstance(text, str) or len(text) > MAX_TEXT):
        raise ApiError(422, "bad-parameter", f"text must be a string of at most {MAX_TEXT} characters")
    given = sum(x is not None for x in (image, text, image_id))
    if given != 1:
        raise ApiError(400, "no-query" if given == 0 else "ambiguous-query",
                       "give exactly one query: an image (`file` upload, image body or image_base64), "
                       "`text`, or an indexed image `id`")
    min_score = params.get("min_score")
    try:
        min_score = float(min_score) if min_score not in (None, "") else None
    except (TypeError, ValueError) as exc:
        raise ApiError(422, "bad-parameter", f"min_score must be a number, not {min_score!r}") from exc
    collection = str(params.get("collection") or DEFAULT_COLLECTION)
    expand = bool_param(params, "expand", True)
    rotation_invariant = bool_param(params, "rotation_invariant", False)
    copies = bool_param(params, "copies", False)
    objects = bool_param(params, "objects", False)
    box = params.get("box") if params.get("box") not in (None, "") else None
    if (objects or box is not None) and (image is None and image_id is None or copies):
        raise ApiError(400, "bad-request", "`objects` and `box` search with a picture (an upload or an `id`), "
                       "not with `text` or `copies`")
    flt = search_filter(params)

    def run() -> dict[str, Any]:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        hits = state.lib.search(image if image is not None else image_id, k=k, collection=collection, text=text,
                                flt=flt, min_score=min_score, expand=expand, rotation_invariant=rotation_invariant,
                                limits=state.limits, timings=timings, copies=copies, objects=objects, box=box)
        if "decode" in timings:
            state.metrics.search_steps.labels("decode").observe(timings["decode"])
        state.metrics.search_steps.labels("embed+nearest").observe(timings["embed"] + timings["search"])
        return {"collection": collection, "model": state.lib.info(collection).model, "k": k, "expand": expand,
                "rotation_invariant": rotation_invariant, "took_ms": round((time.perf_counter() - started) * 1000, 2),
                **({"copies": True} if copies else {}),
                **({"objects": True} if objects else {}), **({"box": box} if box is not None else {}),
                "results": [{**state.record_out(collection, h.record, h.score, rank),
                             **({"copy": h.comparison.to_dict()} if copies else {}),  # type: ignore[attr-defined]
                             **({"box": h.box} if getattr(h, "box", None) else {}),
                             **({"query_box": h.query_box} if getattr(h, "query_box", None) else {})}
                            for rank, h in enumerate(hits, 1)]}

    return JSONResponse(await run_in_threadpool(run))


router.add_api_route("/api/search", search, methods=["POST"], openapi_extra=search_openapi(),
                     responses=error_responses(400, 404, 409, 413, 415, 503),
                     summary="Search by image upload, raw image body, base64 JSON, text or image id")
router.add_api_route("/search", search, methods=["POST"], include_in_schema=False)


async def regions(request: Request) -> JSONResponse:
    """The regions an `objects=true` search would search with, for a client to draw them (the web page)."""
    state: ServiceState = service(request)
    params, image = await _request_params(request, state.settings.max_upload_bytes)
    image_id = int_param(params, "id", None, 1, MAX_IMAGE_ID)
    if (image is None) == (image_id is None):
        raise ApiError(400, "no-query" if image is None else "ambiguous-query",
                       "give exactly one picture: an image (`file` upload, image body or image_base64) or an "
                       "indexed image `id` (with its `collection`)")
    collection = str(params.get("collection") or DEFAULT_COLLECTION)
    query = image if image is not None else image_id
    found = await run_in_threadpool(state.lib.regions, query, collection=collection, limits=state.limits)
    return JSONResponse({"collection": collection, **found.to_dict()})


router.add_api_route("/api/regions", regions, methods=["POST"], responses=error_responses(400, 404, 409, 413, 415, 503),
                     summary="The objects and regions found in a picture (what `objects=true` searches with): "
                             "boxes in its pixels, with its width and height",
                     openapi_extra={
                         "parameters": [
                             {"name": "collection", "in": "query", "required": False,
                              "schema": {**NAME, "default": DEFAULT_COLLECTION},
                              "description": "the collection whose model (and ids) to use"},
                             {"name": "id", "in": "query", "required": False, "schema": ID,
                              "description": "an indexed image (instead of an upload)"}],
                         "requestBody": {"required": False, "content": {
                             "multipart/form-data": {"schema": {"type": "object", "properties": {
                                 "file": {"type": "string", "format": "binary"}, "collection": NAME}}},
                             "application/json": {"schema": {"type": "object", "properties": {
                                 "image_base64": {"type": "string", "contentEncoding": "base64"}, "id": ID,
                                 "collection": NAME}}},
                             "image/*": {"schema": {"type": "string", "format": "binary"}}}}})


@router.post("/api/compare", summary="Similarity of two images in [0, 1] with a verdict",
             responses=error_responses(400, 404, 409, 413, 415, 503))
def compare(request: Request, a: UploadFile | None = File(None, description="first image"),
            b: UploadFile | None = File(None, description="second image"),
            a_id: int | None = Form(None, ge=1, le=MAX_IMAGE_ID, description="or: the id of an image in `collection`"),
            b_id: int | None = Form(None, ge=1, le=MAX_IMAGE_ID),
            collection: str | None = Form(None, pattern=COLLECTION_NAME, max_length=64,
                                          description="use this collection's model (and ids)"),
            model: str | None = Form(None, min_length=1, max_length=MAX_SPEC)) -> dict[str, Any]:
    state = service(request)

    def pick(upload: UploadFile | None, image_id: int | None, label: str) -> bytes | int:
        if (upload is None) == (image_id is None):
            raise ApiError(400, "bad-request", f"give image {label} as a `{label}` upload or `{label}_id`")
        return image_id if upload is None else upload.file.read(state.limits.max_bytes + 1)  # type: ignore[return-value]

    first, second = pick(a, a_id, "a"), pick(b, b_id, "b")
    return state.lib.compare(first, second, collection=collection, model=model, limits=state.limits).to_dict()
