"""Running the service: logging set-up, a port check that fails in one line, and `serve` (uvicorn)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any

from ..errors import LookalikeError
from ..library import Library
from .app import create_app
from .settings import ServerSettings

log = logging.getLogger("lookalike.server")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                                "logger": record.name, "msg": record.getMessage()}
        data.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(settings: ServerSettings) -> None:
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def check_port(host: str, port: int) -> None:
    """Fail with one clear line when the address can't be bound (before loading anything heavy)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise LookalikeError(f"cannot listen on '{host}': {exc.strerror}; use an IP address or a known host name"
                             ) from exc
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            raise LookalikeError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port "
                                 "(or stop what is using it)") from exc


def serve(home: str | os.PathLike[str] | None = None, **overrides: Any) -> None:
    """Run the service until SIGINT/SIGTERM; in-flight requests get `shutdown_timeout` seconds."""
    import uvicorn

    lib = Library.open(home)
    try:
        settings = ServerSettings.load(lib.settings, **overrides)
        check_port(settings.host, settings.port)
    except BaseException:
        lib.close()
        raise
    configure_logging(settings)
    app = create_app(lib, settings=settings, owns_library=True)
    log.info("serving", extra={"url": f"http://{settings.host}:{settings.port}/", "home": str(lib.home),
                               "api_key": bool(settings.api_key), "allowed_roots": settings.allowed_roots})
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=int(settings.shutdown_timeout) or None,
                            server_header=False, lifespan="on")
    if threading.current_thread() is threading.main_thread():
        # uvicorn drains requests on SIGTERM/SIGINT, then re-raises the signal: make that a clean exit (0)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: sys.exit(0))
    uvicorn.Server(config).run()
