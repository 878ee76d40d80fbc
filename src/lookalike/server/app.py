"""The HTTP service: a thin FastAPI face over `Library`, plus the web page at `/`.

The app factory wires the pieces: middleware (body limits, observation), the error mapping
(`errors.py`), and one router per resource (`routes/`). Handlers parse, call one Library method and
format; blocking work runs in FastAPI's thread pool (the store is thread-safe and ONNX Runtime sessions
may run concurrently). Index, dupes and training jobs run in background threads (`jobs.py`).
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from ..library import Library
from . import errors
from .middleware import BodyLimit, KeyFirst, Observe
from .routes import collections, dupes, images, jobs, search, system
from .settings import ServerSettings
from .state import ServiceState

log = logging.getLogger("lookalike.server")


def create_app(library: Library | None = None, *, home: str | os.PathLike[str] | None = None,
               settings: ServerSettings | None = None, owns_library: bool | None = None) -> FastAPI:
    """The ASGI app. Given a `library`, the caller keeps ownership (it is not closed on shutdown)."""
    if owns_library is None:
        owns_library = library is None
    lib = library or Library.open(home)
    settings = settings or ServerSettings.load(lib.settings)
    state = ServiceState(lib, settings, owns_library)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        threading.Thread(target=state.warm_up, name="warm-up", daemon=True).start()
        state.start_jobs()  # also runs jobs other processes on this library queued
        yield
        state.shutting_down = True
        log.info("shutting down", extra={"running_jobs": state.jobs.running})
        await run_in_threadpool(state.shutdown_jobs, settings.shutdown_timeout)
        if state.owns_library:
            state.lib.close()

    from .. import __version__

    app = FastAPI(title="lookalike", version=__version__, lifespan=lifespan,
                  description="Self-hosted reverse image search. Errors are JSON: "
                              '`{"error": "<code>", "message": "<what is wrong and what to do>"}`. '
                              "Write endpoints need the `X-API-Key` header when the server has an API key.")
    app.state.service = state

    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(KeyFirst, state=state)  # outside BodyLimit: no key, 401 before any 413 or 422
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["X-Request-ID"])
    app.add_middleware(Observe, state=state)
    errors.install(app)

    app.mount("/static", StaticFiles(directory=system.STATIC), name="static")
    for module in (system, search, collections, images, jobs, dupes):
        app.include_router(module.router)
    from .routes import train as train_routes  # issue 16: training jobs

    app.include_router(train_routes.router)
    generate = app.openapi

    def openapi() -> dict[str, Any]:  # the schema states this server's own limit on k
        if app.openapi_schema is None:
            search.declare_max_k(generate(), settings.max_k)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    return app
