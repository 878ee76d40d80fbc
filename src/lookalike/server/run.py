"""Running the service: logging set-up, a port check that fails in one line, and `serve` (uvicorn).

`serve(workers=N)` with N > 1 runs N uvicorn worker processes on one socket, each with its own `Library` on the
same library directory. That is safe because everything they share is on disk: a write commits to the SQLite
catalogue with its index log, and each worker's Faiss index catches up from that log before it searches
(store/faiss_index.py), so a search in any worker sees every write committed before it started. Uploads,
replaces and removes take the library's write lock (write_lock.py): one at a time across the workers, a 503
`write-busy` after `write_wait` seconds. Index jobs are shared through jobs.sqlite (jobs_db.py), and /metrics
adds up every worker through prometheus_client's multiprocess mode (a fresh folder unless
PROMETHEUS_MULTIPROC_DIR names one). Each worker loads its own models: memory grows with N.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import asdict
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


WORKER_SETTINGS_ENV = "LOOKALIKE_WORKER_SETTINGS"  # the parent's resolved settings, handed to each worker


def serve(home: str | os.PathLike[str] | None = None, *, workers: int = 1, **overrides: Any) -> None:
    """Run the service until SIGINT/SIGTERM; in-flight requests get `shutdown_timeout` seconds.
    `workers` > 1: that many processes on one socket (see the module docstring)."""
    import uvicorn

    if workers < 1:
        raise LookalikeError(f"--workers {workers}: use 1 or more worker processes")
    lib = Library.open(home)
    try:
        settings = ServerSettings.load(lib.settings, **overrides)
        store = lib.settings.store.strip()
        if workers > 1 and store.startswith("milvus:") and "://" not in store:
            raise LookalikeError(f"--workers {workers} with the Milvus Lite store '{store}': Milvus Lite allows "
                                 "one process per database; use --workers 1, or a Milvus server "
                                 "(--store milvus:http://HOST:19530)")
        check_port(settings.host, settings.port)
    except BaseException:
        lib.close()
        raise
    if workers > 1:
        lib.close()
        _serve_workers(str(lib.home), settings, workers, threads_set=lib.settings.intra_op_threads != 0)
        return
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


def _serve_workers(home: str, settings: ServerSettings, workers: int, *, threads_set: bool) -> None:
    """uvicorn's process manager over `worker_app`: each worker rebuilds the settings resolved here."""
    import uvicorn

    configure_logging(settings)
    os.environ["LOOKALIKE_HOME"] = home
    os.environ[WORKER_SETTINGS_ENV] = json.dumps(asdict(settings))
    if not threads_set:
        # N workers each running ONNX Runtime on every core would oversubscribe the CPUs N times over
        os.environ["LOOKALIKE_INTRA_OP_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    own_metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # must be set before the workers import prometheus_client
        own_metrics_dir = tempfile.mkdtemp(prefix="lookalike-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_metrics_dir
    log.info("serving", extra={"url": f"http://{settings.host}:{settings.port}/", "home": home, "workers": workers,
                               "api_key": bool(settings.api_key), "allowed_roots": settings.allowed_roots})
    try:
        uvicorn.run("lookalike.server.run:worker_app", factory=True, workers=workers, host=settings.host,
                    port=settings.port, log_config=None, access_log=False, server_header=False, lifespan="on",
                    timeout_graceful_shutdown=int(settings.shutdown_timeout) or None)
    finally:
        if own_metrics_dir is not None:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)


def worker_app() -> Any:
    """The app of one worker process started by `serve(workers=N)`: its own Library on the shared home."""
    settings = ServerSettings.from_values(json.loads(os.environ[WORKER_SETTINGS_ENV]))
    configure_logging(settings)
    logging.getLogger("uvicorn.access").propagate = False  # access_log=False, as one process has it
    lib = Library.open(os.environ["LOOKALIKE_HOME"])
    return create_app(lib, settings=settings, owns_library=True)
