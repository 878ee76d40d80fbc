"""The HTTP service and web page (`lookalike serve`). Needs the `server` extra (FastAPI, uvicorn).

    from lookalike.server import create_app
    app = create_app(home="~/lookalike")      # an ASGI app: run it with any ASGI server
"""

from __future__ import annotations

from typing import Any

from ..errors import LookalikeError

NEEDS = "the HTTP service needs FastAPI and uvicorn: pip install 'lookalike[server]'"


def _require() -> None:
    try:
        import fastapi  # noqa: F401
        try:
            import python_multipart  # noqa: F401
        except ImportError:
            import multipart  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise LookalikeError(f"{NEEDS} ({exc.name} is missing)") from exc


def create_app(*args: Any, **kwargs: Any) -> Any:
    _require()
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)


def serve(home: Any = None, **overrides: Any) -> None:
    _require()
    from .run import serve as _serve

    _serve(home, **overrides)


__all__ = ["create_app", "serve"]
