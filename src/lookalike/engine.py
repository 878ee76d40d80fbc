"""Distributed ingest on Dask: the local pipeline's steps, with read -> decode -> embed on engine workers.

Dask distributed was chosen over Ray Data by measurement (../shared/ENGINES.md, docs/distributed.md): for
200 images 3 s and ~0.45 GB in 4 processes against 10.5 s and ~1.5 GB in 13, and no outside traffic
of its own. The driver (this process) walks the folders and skips what the store already holds
(`ingest.index_paths`); workers run `ingest.prepare_and_embed` on chunks of `batch_size` files with
an embedder each builds once; results come back in order and the driver is the one writer, committing
every `commit_every` images, so a killed run resumes exactly as a local one does.

Engines: "local-cluster" starts a Dask cluster on this machine, bound to 127.0.0.1, for the run;
"tcp://host:8786" (or "tls://...") uses a running scheduler. Nothing here is a scheduler of its own.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .errors import EngineError

if TYPE_CHECKING:
    from distributed import Client, Future

    from .config import Settings
    from .embed import Embedder
    from .ingest import FileJob, ProgressFn, TodoItem, _Prepared, _Writer

log = logging.getLogger("lookalike")

LOCAL = "local"
LOCAL_CLUSTER = "local-cluster"
# Every engine process gets these: ONNX Runtime's telemetry off (it looks up an outside host ~9 s after a
# session starts). Dask itself sends nothing off the machine (measured, ENGINES.md).
ENGINE_ENV = {"ORT_DISABLE_TELEMETRY": "1"}
_SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://")


def check_engine(engine: str) -> str:
    """The engine named by `--engine`, or a UsageError saying which ones there are."""
    engine = (engine or LOCAL).strip()
    if engine in (LOCAL, LOCAL_CLUSTER) or engine.startswith(_SCHEMES):
        return engine
    if engine.startswith("ray://"):
        raise EngineError("--engine ray:// is not supported: lookalike runs on Dask (measured lighter and faster, "
                         "see docs/distributed.md); start a Dask scheduler and pass --engine tcp://HOST:8786")
    raise EngineError(f"unknown engine '{engine}'; use local, local-cluster, or a Dask scheduler address "
                     "such as tcp://HOST:8786")


@dataclass(frozen=True)
class EmbedderSpec:
    """How a worker builds the driver's embedder: by name, from the same model folder (shared storage on a
    real cluster; a worker without it uses its own library's models folder)."""

    name: str
    model_dir: str
    threads: int = 0  # ONNX Runtime intra-op threads; 0: the worker's cores / its task threads


_embedders: dict[EmbedderSpec, Embedder] = {}
_embedders_lock = threading.Lock()
_builds = 0  # embedders this process has built, and engine tasks it has run (see `worker_stats`)
_tasks = 0


def worker_embedder(spec: EmbedderSpec) -> Embedder:
    """The embedder for `spec`, built once per worker process and kept for every later task."""
    global _builds
    with _embedders_lock:
        embedder = _embedders.get(spec)
        if embedder is None:
            from .config import library_home
            from .embed import get_embedder

            model_dir = Path(spec.model_dir)
            if not model_dir.is_dir():
                model_dir = library_home() / "models"
            threads = spec.threads or max(1, (os.cpu_count() or 1) // _worker_threads())
            embedder = _embedders[spec] = get_embedder(spec.name, model_dir, threads=threads)
            _builds += 1
        return embedder


def worker_stats() -> dict[str, int]:
    """Embedders built and tasks run by this worker process (`client.run(worker_stats)`): one build however
    many tasks."""
    return {"builds": _builds, "tasks": _tasks, "pid": os.getpid()}


def _worker_threads() -> int:
    try:
        from distributed import get_worker

        return max(1, get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return 1


def embed_task(items: list[TodoItem], spec: EmbedderSpec, job: FileJob) -> tuple[list[_Prepared], float]:
    """What a worker runs for one chunk: the local pipeline's own per-file step and batched inference."""
    from .ingest import prepare_and_embed

    global _tasks
    _tasks += 1
    for name, value in ENGINE_ENV.items():  # a worker someone started by hand may lack them
        os.environ.setdefault(name, value)
    return prepare_and_embed(items, worker_embedder(spec), job)


def local_cluster_size(settings: Settings) -> tuple[int, int]:
    """(worker processes, ONNX Runtime threads each) for a cluster on this machine."""
    cores = os.cpu_count() or 1
    workers = settings.engine_workers or max(1, min(cores, 8))
    return workers, settings.intra_op_threads or max(1, cores // workers)


@contextmanager
def connect(engine: str, settings: Settings) -> Iterator[tuple[Client, int]]:
    """A Dask client on `engine`, and the ONNX Runtime threads workers should use (0: they decide)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise EngineError("--engine needs Dask distributed: pip install 'lookalike[scale]' "
                          "(or pip install 'dask[distributed]')") from exc
    for name, value in ENGINE_ENV.items():
        os.environ.setdefault(name, value)
    if engine == LOCAL_CLUSTER:
        workers, threads = local_cluster_size(settings)
        try:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=None, env=dict(ENGINE_ENV), silence_logs=logging.WARNING)
        except Exception as exc:  # noqa: BLE001 - any start-up failure is one clear line
            raise EngineError(f"could not start a Dask cluster on this machine: {type(exc).__name__}: {exc}") from exc
        try:
            with Client(cluster) as client:
                yield client, threads
        finally:
            cluster.close()
        return
    warn_if_exposed(engine)
    try:
        client = Client(engine, timeout=30)
    except Exception as exc:  # noqa: BLE001
        raise EngineError(f"could not reach the Dask scheduler at {engine}: {type(exc).__name__}: {exc}; "
                          "is `dask scheduler` running there?") from exc
    with client:
        if not client.nthreads():
            try:
                client.wait_for_workers(1, timeout=60)
            except Exception as exc:  # noqa: BLE001
                raise EngineError(f"the Dask scheduler at {engine} has no workers (waited 60 s); start some with "
                                  f"`dask worker {engine}`") from exc
        yield client, settings.intra_op_threads


def warn_if_exposed(address: str) -> None:
    """Dask's tcp:// protocol is unauthenticated and unencrypted: anyone who reaches the scheduler can run
    code on the workers. Say so for an address off this machine (a real cluster needs a network)."""
    parts = urlsplit(address)
    host = parts.hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    if parts.scheme == "tcp" and not local:
        log.warning("the Dask scheduler at %s is reached over plain tcp://: file paths and vectors travel "
                    "unencrypted and the scheduler accepts any client; keep it on a private network or use "
                    "tls:// (docs/distributed.md)", address)


def run(engine: str, todo: list[TodoItem], embedder: Embedder, job: FileJob, writer: _Writer,
        progress: ProgressFn | None, *, model_dir: Path | None = None) -> None:
    """Embed `todo` on the engine's workers, in chunks of `batch_size`, handing results to `writer` in order."""
    from .config import library_home

    settings, stages = job.settings, writer.report.stages
    started = time.perf_counter()
    with connect(check_engine(engine), settings) as (client, threads):
        stages["engine_start"] = time.perf_counter() - started
        stages.setdefault("read_decode", 0.0)
        stages.setdefault("embed", 0.0)
        spec = EmbedderSpec(embedder.name, str(model_dir or library_home() / "models"), threads)
        size = max(1, settings.batch_size)
        chunks = iter([todo[i:i + size] for i in range(0, len(todo), size)])
        queue: deque[tuple[list[TodoItem], Future]] = deque()

        def top_up() -> None:
            """Two chunks in flight per worker thread (read again: workers may join or leave): every worker
            busy, and the driver's memory bounded."""
            window = max(2, 2 * sum(client.nthreads().values()))
            while len(queue) < window:
                chunk = next(chunks, None)
                if chunk is None:
                    return
                queue.append((chunk, client.submit(embed_task, chunk, spec, job, pure=False)))

        top_up()
        done, total = 0, len(todo)
        while queue:
            chunk, future = queue.popleft()
            try:
                results, embed_seconds = future.result()
            except Exception as exc:  # noqa: BLE001 - a lost worker or a failing task: try file by file
                results, embed_seconds = _one_by_one(client, chunk, spec, job, exc)
            top_up()
            for result in results:
                stages["read_decode"] += result.seconds
                writer.take(result)
            stages["embed"] += embed_seconds
            done += len(chunk)
            if progress:
                progress(done, total)
        writer.commit()


def _one_by_one(client: Client, chunk: list[TodoItem], spec: EmbedderSpec, job: FileJob,
                first: BaseException) -> tuple[list[_Prepared], float]:
    """A chunk whose task failed, again one file a task: the files that still fail are skipped as
    `engine-error`; if none succeeds the workers themselves are broken and the run stops (resumable)."""
    from .ingest import ImageRecord, Skipped, _Prepared

    futures = [client.submit(embed_task, [item], spec, job, pure=False) for item in chunk]
    results: list[_Prepared] = []
    seconds, failed = 0.0, 0
    for item, future in zip(chunk, futures, strict=True):
        try:
            got, embed_seconds = future.result()
            results.extend(got)
            seconds += embed_seconds
        except Exception as exc:  # noqa: BLE001
            failed += 1
            path = str(item[0])
            results.append(_Prepared(ImageRecord(path=path), error=Skipped(path, "engine-error",
                                                                           f"{type(exc).__name__}: {exc}")))
    if failed == len(chunk):
        raise EngineError(f"the engine's workers fail on every file ({type(first).__name__}: {first}); "
                          "check that lookalike and its models are installed on every worker")
    return results, seconds


__all__ = ["ENGINE_ENV", "LOCAL", "LOCAL_CLUSTER", "EmbedderSpec", "EngineError", "check_engine", "connect",
           "embed_task", "run", "worker_embedder", "worker_stats"]
