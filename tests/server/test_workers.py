"""`lookalike serve --workers 2`: two real processes over one library, on 127.0.0.1. Every search that starts
after a write's answer sees the write, whichever worker serves it; writes wait for each other or answer 503
`write-busy`; no client ever gets a 500 or a "database is locked"."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict

from lookalike.write_lock import LibraryWriteLock

from ..conftest import ukbench_images
from .conftest import wait_http_ready
from .test_serve import free_port

pytestmark = pytest.mark.slow


class Client:
    """One request per fresh connection, so the kernel hands each to whichever worker accepts first."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request(self, method: str, path: str, fields: dict[str, str] | None = None,
                image: bytes | None = None) -> tuple[int, dict, dict[str, str]]:
        body, headers = b"", {}
        if image is not None:
            boundary = uuid.uuid4().hex
            parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                     for k, v in (fields or {}).items()]
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="q.jpg"\r\n'
                         "Content-Type: image/jpeg\r\n\r\n".encode() + image + b"\r\n")
            body = b"".join(parts) + f"--{boundary}--\r\n".encode()
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            return response.status, json.loads(raw or b"{}"), {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()

    def top(self, image: bytes) -> str | None:
        status, data, _ = self.request("POST", "/api/search?collection=c&k=1&expand=false", image=image)
        assert status == 200, data
        return data["results"][0].get("external_id") if data["results"] else None


def searches_per_worker(metrics_dir: Path) -> dict[str, float]:
    """Search requests each worker process counted (prometheus_client keeps one file per process)."""
    served: dict[str, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            name, _, labels, *_ = json.loads(key)
            if name == "lookalike_http_requests" and labels.get("route") == "/api/search":
                served[path.stem] = served.get(path.stem, 0.0) + value
    return served


def test_two_workers_over_one_library_see_every_write(tmp_path: Path, model_cache: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(model_cache, target_is_directory=True)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    env = {**os.environ, "LOOKALIKE_HOME": str(home), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
           "LOOKALIKE_LOG_LEVEL": "warning", "LOOKALIKE_WRITE_WAIT": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "serve", "--host", "127.0.0.1", "--port",
                             str(port), "--workers", "2"], env=env, stdout=log, stderr=log)
    client = Client(port)
    photos = [p.read_bytes() for p in ukbench_images(40, start=200)[::4]]  # 10 different objects
    try:
        def alive() -> None:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]

        wait_http_ready(f"http://127.0.0.1:{port}", alive, timeout=180)
        status, data, _ = client.request("POST", "/api/collections/c/images", {"id": "seed"}, photos[0])
        assert status == 201, data

        # searches from another thread the whole time: every answer a 200
        statuses: Counter[int] = Counter()
        failures: list[dict] = []
        stop = threading.Event()

        def background_searches() -> None:
            while not stop.is_set():
                status, data, _ = client.request("POST", "/api/search?collection=c&k=3", image=photos[0])
                statuses[status] += 1
                if status != 200:
                    failures.append(data)

        searcher = threading.Thread(target=background_searches)
        searcher.start()
        try:
            for n, photo in enumerate(photos[1:6], start=1):
                status, data, _ = client.request("POST", "/api/collections/c/images", {"id": f"w{n}"}, photo)
                assert status == 201, data
                for _ in range(4):  # after the answer, any worker finds it
                    assert client.top(photo) == f"w{n}"
                image_id = data["id"]
            status, data, _ = client.request("DELETE", f"/api/collections/c/images/{image_id}")
            assert status == 200, data
            for _ in range(4):
                assert client.top(photos[5]) != "w5"

            # two writes at once, through two connections: they take turns, both land
            answers: list[int] = []

            def upload(n: int) -> None:
                answers.append(client.request("POST", "/api/collections/c/images", {"id": f"t{n}"}, photos[n])[0])

            writers = [threading.Thread(target=upload, args=(n,)) for n in (6, 7)]
            for w in writers:
                w.start()
            for w in writers:
                w.join()
            assert answers == [201, 201]
            assert client.top(photos[6]) == "t6" and client.top(photos[7]) == "t7"

            # while another process holds the library's write lock, a write answers 503 write-busy
            with LibraryWriteLock(home / "locks", wait=0):
                status, data, headers = client.request("POST", "/api/collections/c/images", {"id": "late"},
                                                       photos[8])
            assert status == 503 and data["error"] == "write-busy" and "retry-after" in headers, data
            assert "write" in data["message"] and "\n" not in data["message"]
            status, data, _ = client.request("POST", "/api/collections/c/images", {"id": "late"}, photos[8])
            assert status == 201 and client.top(photos[8]) == "late"
        finally:
            stop.set()
            searcher.join()
        assert statuses[200] > 0 and not failures, failures[:3]
        served = searches_per_worker(metrics_dir)
        assert len(served) == 2 and all(v > 0 for v in served.values()), served  # both workers searched
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    log.close()
    output = (tmp_path / "server.log").read_text()
    assert code == 0, output[-2000:]
    assert "database is locked" not in output and "Traceback" not in output, output[-2000:]


def test_workers_refuse_a_milvus_lite_store(tmp_path: Path) -> None:
    """Milvus Lite serves one process per database: several workers over it is one clear line, exit 1."""
    pytest.importorskip("milvus_lite")
    env = {**os.environ, "LOOKALIKE_HOME": str(tmp_path / "lib")}
    done = subprocess.run([sys.executable, "-m", "lookalike.cli", "--store", f"milvus:{tmp_path}/m.db", "serve",
                           "--workers", "2", "--port", str(free_port())], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Milvus Lite allows one process per database" in lines[0], done.stderr
