"""The web page, liveness and readiness, Prometheus metrics, and the models the server can use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import error_responses, json_error
from ..state import ServiceState, service

STATIC = Path(__file__).resolve().parent.parent / "static"
router = APIRouter()


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/healthz", tags=["operations"], summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"], summary="Readiness: library open and models loaded",
            responses={503: error_responses(503)[503]})
def readyz(state: ServiceState = Depends(service)) -> JSONResponse:
    if state.shutting_down:
        return json_error(503, "shutting-down", "the server is shutting down")
    if state.ready_error:
        return json_error(503, "not-ready", f"model warm-up failed: {state.ready_error}")
    if not state.ready:
        return json_error(503, "not-ready", "loading models; try again in a few seconds")
    return JSONResponse({"status": "ready", "collections": len(state.lib.collections())})


@router.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics(state: ServiceState = Depends(service)) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/models", tags=["collections"], summary="Embedders this server can use")
def models(state: ServiceState = Depends(service)) -> dict[str, Any]:
    return {"default": state.lib.default_model, "models": [c.to_dict() for c in state.lib.models()]}
