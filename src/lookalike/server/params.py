"""Parsing request values the same way for query strings, forms and JSON bodies."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Path
from starlette.convertors import StringConvertor, register_url_convertor

from ..names import COLLECTION_NAME, MAX_IMAGE_ID
from ..store import Filter
from .errors import ApiError

CollectionName = Annotated[str, Path(pattern=COLLECTION_NAME, max_length=64,
                                     description="collection name: 1-64 letters, digits, '_' or '-'")]
ImageId = Annotated[int, Path(ge=1, le=MAX_IMAGE_ID, description="an image's id in the collection")]
JobId = Annotated[str, Path(max_length=64, description="an index job's id")]


class ImageIdConvertor(StringConvertor):
    """Path segments that can be an image id: anything but the name of a sibling route (`count`, `bulk`),
    so `PUT .../images/count` is a 405 with the right Allow header, not an attempt to replace image "count".
    Values that are not integers still reach validation and get its 422."""

    regex = r"(?!(?:count|bulk)/?$)[^/]+"


register_url_convertor("image_id", ImageIdConvertor())


def split_tags(values: list[str] | None) -> list[str]:
    """Tags given as repeated fields and/or comma-separated."""
    out: list[str] = []
    for value in values or []:
        out += [t.strip() for t in str(value).split(",") if t.strip()]
    return out


def metadata_json(raw: str | None) -> dict[str, Any]:
    """A form field holding a JSON object (empty or JSON null: none)."""
    if raw is None or raw.strip() in ("", "null"):
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "bad-metadata", f"metadata is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ApiError(400, "bad-metadata", "metadata must be a JSON object")
    return value


def bool_param(params: dict[str, Any], name: str, default: bool) -> bool:
    value = params.get(name, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no", ""):
        raise ApiError(422, "bad-parameter", f"{name} must be true or false, not {value!r}")
    return text in ("true", "1", "yes") or (text == "" and default)


def int_param(params: dict[str, Any], name: str, default: int | None = None, lo: int | None = None,
              hi: int | None = None) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
        if isinstance(value, float | bool):
            raise ValueError
    except (TypeError, ValueError) as exc:
        raise ApiError(422, "bad-parameter", f"{name} must be an integer, not {value!r}") from exc
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise ApiError(422, "bad-parameter", f"{name} must be between {lo} and {hi}")
    return number


def search_filter(params: dict[str, Any]) -> Filter | None:
    metadata: dict[str, Any] = {}
    raw_meta = params.get("metadata")
    if isinstance(raw_meta, dict):
        metadata.update(raw_meta)
    elif isinstance(raw_meta, str) and raw_meta:
        metadata.update(metadata_json(raw_meta))
    for item in params.get("where") or []:
        if "=" not in str(item):
            raise ApiError(422, "bad-parameter", f"where '{item}' is not KEY=VALUE")
        key, value = str(item).split("=", 1)
        metadata[key] = value
    under = params.get("under")
    flt = Filter(group_id=params.get("group_id") or None, tags=split_tags(params.get("tags")),
                 metadata=metadata, path_prefix=str(under) if under else None)
    return None if flt.is_empty() else flt
