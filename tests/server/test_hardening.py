"""Service hardening (issue 20): index jobs stay inside the allowed roots through symlinks, a swapped file is
never served, decodes are bounded in memory (503 + Retry-After when full), the API key is checked before
the body, and jobs (and metrics) are shared by every process serving one library."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lookalike import Library
from lookalike.server import create_app
from lookalike.server.settings import ServerSettings

from ..conftest import ukbench_images
from ..test_roots import make_trap
from .conftest import API_KEY, WRITE, wait_http_ready, wait_ready
from .test_serve import free_port


@pytest.fixture
def trap(tmp_path: Path) -> tuple[Path, Path]:
    return make_trap(tmp_path)


@pytest.fixture
def served(home: Path, trap: tuple[Path, Path]) -> Iterator[tuple[TestClient, Library]]:
    root, _ = trap
    lib = Library.open(home, decode_wait=0.3)
    settings = ServerSettings(api_key=API_KEY, allowed_roots=[str(root)])
    with TestClient(create_app(lib, settings=settings)) as client:
        wait_ready(client)
        yield client, lib
    lib.close()


def wait_job(client: TestClient, job_id: str, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def test_index_job_does_not_follow_symlinks_out_of_the_root(served: tuple[TestClient, Library],
                                                            trap: tuple[Path, Path]) -> None:
    client, lib = served
    root, outside = trap
    r = client.post("/api/collections/trav/index", json={"path": str(root / "trap")}, headers=WRITE)
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "done", job
    report = job["report"]
    assert report["added"] == 4 and report["count"] == 4
    assert report["skipped_by_reason"] == {"outside-root": 2}
    assert sorted(Path(s["path"]).name for s in report["skipped"]) == ["file_out.jpg", "link_out"]
    outside_bytes = {p.read_bytes() for p in outside.iterdir()}
    for image_id in [v[0] for v in lib.store.known_files("trav").values()]:
        served_file = client.get(f"/api/collections/trav/images/{image_id}/file")
        assert served_file.status_code == 200 and served_file.content not in outside_bytes
    # a folder that is itself a link out is refused before any job starts
    r = client.post("/api/collections/trav/index", json={"path": str(root / "trap" / "link_out")}, headers=WRITE)
    assert r.status_code == 403 and r.json()["error"] == "outside-allowed-roots"


def test_a_swapped_file_is_not_served(served: tuple[TestClient, Library], tmp_path: Path) -> None:
    client, lib = served
    folder = tmp_path / "served"
    folder.mkdir()
    first, second = ukbench_images(2, start=20)
    target = folder / "a.jpg"
    shutil.copy(first, target)
    lib.index([folder], "swap")
    image_id = next(iter(lib.store.known_files("swap").values()))[0]
    url = f"/api/collections/swap/images/{image_id}"
    assert client.get(url + "/file").content == first.read_bytes()
    assert client.get(url + "/thumbnail").status_code == 200  # now cached
    st = target.stat()

    # 1. replaced by a symlink to an outside picture
    outside = tmp_path / "secret.jpg"
    shutil.copy(second, outside)
    target.unlink()
    target.symlink_to(outside)
    for part in ("/file", "/thumbnail"):
        r = client.get(url + part)
        assert r.status_code == 409 and r.json()["error"] == "file-changed", (part, r.text)
        assert r.content != outside.read_bytes()

    # 2. same size and mtime, other bytes: caught by the content hash
    target.unlink()
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_mtime == st.st_mtime
    r = client.get(url + "/file")
    assert r.status_code == 409 and "re-index" in r.json()["message"]

    # 3. put back as it was: served again; gone: 404
    shutil.copy(first, target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert client.get(url + "/file").content == first.read_bytes()
    target.unlink()
    assert client.get(url + "/file").status_code == 404


def test_the_api_key_is_checked_before_the_body(served: tuple[TestClient, Library]) -> None:
    client, _ = served
    assert client.post("/api/collections", json={"nope": 1}).status_code == 401
    assert client.post("/api/collections", content=b"{not json", headers={"Content-Type": "application/json"}
                       ).status_code == 401
    assert client.post("/api/collections/x/images", data={"id": "a"}).status_code == 401
    assert client.post("/api/collections", json={"nope": 1}, headers={"X-API-Key": "wrong"}).status_code == 403
    assert client.post("/api/collections", json={"nope": 1}, headers=WRITE).status_code == 422
    assert client.get("/api/collections").status_code == 200  # reads need no key


def big_png(side: int = 7000) -> bytes:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    try:
        from decode_memory import big_png as make
    finally:
        sys.path.pop(0)
    return make(side)


def test_a_full_decode_memory_answers_503_with_retry_after(served: tuple[TestClient, Library],
                                                           trap: tuple[Path, Path]) -> None:
    from lookalike.decode import MEMORY

    client, lib = served
    lib.index([trap[0] / "other"], "busy")
    query = ukbench_images(1)[0].read_bytes()
    with MEMORY.hold(MEMORY.budget):  # every byte of decode memory taken
        r = client.post("/api/search?collection=busy", files={"file": ("q.jpg", query, "image/jpeg")})
    assert r.status_code == 503 and r.json()["error"] == "busy" and r.headers["Retry-After"] == "1"
    assert client.post("/api/search?collection=busy", files={"file": ("q.jpg", query, "image/jpeg")}
                       ).status_code == 200


def test_a_huge_png_is_decoded_reduced(served: tuple[TestClient, Library]) -> None:
    from lookalike.decode import decode

    png = big_png(6000)
    image = decode(png, draft_size=256)
    assert 512 <= min(image.size) < 1100 and image.mode == "RGB"


def status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def post_search(port: int, body: bytes, collection: str) -> tuple[int, str | None]:
    boundary = "----hardening"
    payload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"q.png\"\r\n"
               "Content-Type: image/png\r\n\r\n").encode() + body + f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", f"/api/search?collection={collection}&k=3", body=payload,
                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("Retry-After")
    finally:
        conn.close()


class Server:
    """`lookalike serve` in a subprocess on 127.0.0.1."""

    def __init__(self, home: Path, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full = {**os.environ, "LOOKALIKE_HOME": str(home), "LOOKALIKE_HOST": "127.0.0.1",
                "LOOKALIKE_PORT": str(self.port), "LOOKALIKE_LOG_LEVEL": "warning", **env}
        self.proc = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "serve"], env=full,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def ready(self) -> Server:
        def alive() -> None:
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""

        wait_http_ready(self.base, alive, timeout=120)
        return self

    def get(self, path: str) -> tuple[int, dict | str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as r:
                body = r.read().decode()
                return r.status, json.loads(body) if r.headers.get_content_type() == "application/json" else body
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def post(self, path: str, data: dict) -> tuple[int, dict]:
        req = urllib.request.Request(self.base + path, data=json.dumps(data).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **WRITE})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


BOUND_MIB = 256  # the decode memory the server is given
PEAK_OVER_IDLE_MIB = 600  # measured: ~1 decode (191 MiB of pixels) + embedding and request buffers


@pytest.mark.slow
def test_parallel_huge_decodes_stay_under_the_memory_bound(home: Path, figures: dict[str, str]) -> None:
    with Library.open(home) as lib:
        lib.index(ukbench_images(4), "mem")
    server = Server(home, LOOKALIKE_DECODE_MEMORY_MB=str(BOUND_MIB), LOOKALIKE_DECODE_WAIT="3").ready()
    try:
        png = big_png(7000)
        assert len(png) < 300_000
        small = ukbench_images(1)[0].read_bytes()
        post_search(server.port, small, "mem")
        idle = status(server.proc.pid)["VmRSS"]
        answers: list[tuple[int, str | None]] = []
        lock = threading.Lock()

        def one() -> None:
            answer = post_search(server.port, png, "mem")
            with lock:
                answers.append(answer)

        threads = [threading.Thread(target=one) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peak = status(server.proc.pid)["VmHWM"]
        over = (peak - idle) / 2**20
        codes = [code for code, _ in answers]
        figures["16 parallel 7000x7000 PNG searches, peak RSS over idle"] = (
            f"{over:.0f} MiB (bound {PEAK_OVER_IDLE_MIB}; decode memory {BOUND_MIB} MiB; "
            f"{codes.count(200)} x 200, {codes.count(503)} x 503)")
        assert {code for code, _ in answers} <= {200, 503} and any(code == 200 for code, _ in answers), answers
        assert all(retry == "1" for code, retry in answers if code == 503)
        assert over < PEAK_OVER_IDLE_MIB, f"peak RSS {peak / 2**20:.0f} MiB is {over:.0f} MiB over idle"
    finally:
        server.stop()


@pytest.mark.slow
def test_two_server_processes_share_one_job_list_and_never_run_a_job_twice(home: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    folders = []
    for n in range(3):
        folder = root / f"f{n}"
        folder.mkdir(parents=True)
        for src in ukbench_images(4, start=4 * n):
            shutil.copy(src, folder)
        folders.append(folder)
    with Library.open(home) as lib:
        lib.create_collection("shared")  # both processes then load a model they already agree on
    env = {"LOOKALIKE_API_KEY": API_KEY, "LOOKALIKE_ALLOWED_ROOTS": str(root),
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    servers = [Server(home, **env), Server(home, **env)]
    try:
        a, b = (s.ready() for s in servers)
        ids = []
        for n in range(8):  # the same three folders asked for again and again, through either process
            server = (a, b)[n % 2]
            code, job = server.post("/api/collections/shared/index", {"path": str(folders[n % 3]),
                                                                       "tags": [f"t{n}"]})
            assert code == 202, job
            ids.append(job["id"])
        deadline = time.monotonic() + 240
        polls = 0
        while True:
            states = []
            for job_id in ids:
                for server in (a, b):
                    code, job = server.get(f"/api/jobs/{job_id}")
                    polls += 1
                    assert code == 200, (code, job)  # every process answers for every job
                    states.append(job["state"])
            if all(s in ("done", "failed", "cancelled") for s in states):
                break
            assert time.monotonic() < deadline, states
            time.sleep(0.2)
        jobs = [a.get(f"/api/jobs/{job_id}")[1] for job_id in ids]
        assert [j["state"] for j in jobs] == ["done"] * 8, jobs
        assert b.get(f"/api/jobs/{ids[0]}")[1] == jobs[0]
        # one runner at a time per collection: the runs never overlap, and each file was added exactly once
        spans = sorted((j["started"], j["finished"]) for j in jobs)
        assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:], strict=False)), spans
        assert sum(j["report"]["added"] for j in jobs) == 12
        assert a.get("/api/collections/shared")[1]["count"] == 12
        # a dupes job started in one process: the other answers for it, progress and result alike
        code, started = a.post("/api/collections/shared/dupes", {})
        assert code == 202, started
        while (seen := b.get(started["url"])[1])["state"] == "running":
            assert time.monotonic() < deadline, seen
            time.sleep(0.2)
        assert seen["state"] == "done" and seen["progress"] == 1.0 and "groups" in seen["result"], seen
        assert a.get(started["url"])[1] == seen
        listed_a, listed_b = a.get("/api/jobs")[1], b.get("/api/jobs")[1]
        assert [j["id"] for j in listed_a["jobs"]] == [j["id"] for j in listed_b["jobs"]]
        assert set(ids) <= {j["id"] for j in listed_a["jobs"]}

        # metrics are the totals of both processes, whichever answers the scrape
        for server, n in ((a, 3), (b, 2)):
            for _ in range(n):
                server.get("/healthz")
        pattern = r'lookalike_http_requests_total\{method="GET",route="/healthz",status="200"\} ([0-9.]+)'
        totals = [float(re.search(pattern, s.get("/metrics")[1]).group(1)) for s in (a, b)]
        assert totals == [5.0, 5.0], totals
    finally:
        for server in servers:
            server.stop()


def test_jobs_of_one_library_are_shared_by_two_apps_in_one_process(home: Path, trap: tuple[Path, Path]) -> None:
    """The fast version of the two-process test: two apps (as two workers would) on one library."""
    root, _ = trap
    settings = ServerSettings(api_key=API_KEY, allowed_roots=[str(root)])
    lib_a, lib_b = Library.open(home), Library.open(home)
    try:
        with TestClient(create_app(lib_a, settings=settings)) as a, \
                TestClient(create_app(lib_b, settings=settings)) as b:
            wait_ready(a)
            wait_ready(b)
            first = a.post("/api/collections/two/index", json={"path": str(root / "trap")}, headers=WRITE).json()
            again = b.post("/api/collections/two/index", json={"path": str(root / "other")}, headers=WRITE).json()
            assert b.get(f"/api/jobs/{first['id']}").status_code == 200
            assert a.get(f"/api/jobs/{again['id']}").status_code == 200
            done = [wait_job(a, first["id"]), wait_job(b, again["id"])]
            assert [j["state"] for j in done] == ["done", "done"]
            assert b.get(f"/api/jobs/{first['id']}").json()["report"] == done[0]["report"]
            spans = sorted((j["started"], j["finished"]) for j in done)
            assert spans[0][1] <= spans[1][0]
            assert a.get("/metrics").text.count("lookalike_index_jobs_running 0.0") == 1
    finally:
        lib_a.close()
        lib_b.close()


def test_a_job_whose_process_died_is_failed_and_the_queue_goes_on(tmp_path: Path) -> None:
    from lookalike.jobs_db import JobsDB
    from lookalike.server.jobs import JobManager

    path = tmp_path / "jobs.sqlite"
    other = JobsDB(path)  # another process: claims a job, then dies (the kernel drops its lock)
    other.submit({"id": "dead", "collection": "c", "paths": ["/a"], "options": {}, "created": time.time(),
                  "submitter": "x"}, keep=10)
    claimed = other.claim("x:1:dead")
    assert claimed is not None and claimed[0]["id"] == "dead"
    jobs = JobManager(lambda job, progress: {"paths": job.paths}, path=path)
    try:
        nxt = jobs.submit("c", ["/b"], {})
        assert jobs.submit("c", ["/b"], {}).id == nxt.id  # asked again before it ran: the same job
        time.sleep(0.5)
        assert jobs.get(nxt.id).state == "queued" and jobs.running == 1  # "c" is busy in the other process
        claimed[1].release()  # ... which dies now
        deadline = time.monotonic() + 10
        while jobs.get(nxt.id).state != "done":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        dead = jobs.get("dead")
        assert dead.state == "failed" and "stopped" in dead.error
        assert JobsDB(path).get(nxt.id)["report"] == {"paths": ["/b"]}  # any process reads the outcome
    finally:
        jobs.shutdown()
