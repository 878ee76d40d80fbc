"""The four repros of issue 20, against live servers on 127.0.0.1, printing one line of figures each.

    python bench/hardening_repro.py [--models DIR] [--json]

1. symlink escape: ROOT/trap/link_out -> an outside folder of 11 photos; POST .../index {"path": "ROOT/trap"}:
   how many images were indexed, how many of them are outside, how many outside files /file serves.
2. swapped file: an indexed file replaced by a symlink to an outside photo: what /file and /thumbnail answer.
3. decode memory: see bench/decode_memory.py (the same load, with its own figures).
4. `uvicorn --workers 2` on one library: 20 polls of GET /api/jobs/{id} (how many 404), /metrics totals of
   one route over 8 scrapes (how many different values), and 4 jobs for one folder (overlapping runs, files
   embedded in all).
Run it with PYTHONPATH pointing at another checkout's src/ to measure that code (e.g. the code before the fix).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from server_latency import stop  # bench/ is on sys.path when a bench script runs

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ukbench_first1000"
KEY = "repro-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base: str, path: str, data: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(base + path, data=json.dumps(data).encode() if data is not None else None,
                                 method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json", "X-API-Key": KEY})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def start(cmd: list[str], env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            if call(f"http://127.0.0.1:{port}", "/readyz")[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("server did not get ready")


def wait_job(base: str, job_id: str) -> dict:
    while True:
        code, body = call(base, f"/api/jobs/{job_id}")
        job = json.loads(body)
        if code == 200 and job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    photos = sorted(SHARED.glob("*.jpg"))
    work = Path(tempfile.mkdtemp(prefix="lookalike-repro-"))
    out: dict[str, object] = {}
    try:
        home, root, outside = work / "home", work / "root", work / "outside"
        for folder in (home, root / "trap", outside, root / "jobs"):
            folder.mkdir(parents=True)
        if args.models:
            (home / "models").symlink_to(args.models.resolve(), target_is_directory=True)
        for src in photos[:3]:
            shutil.copy(src, root / "trap")
        for src in photos[3:14]:
            shutil.copy(src, outside)
        for src in photos[20:36]:
            shutil.copy(src, root / "jobs")
        (root / "trap" / "link_out").symlink_to(outside, target_is_directory=True)
        env = {**os.environ, "LOOKALIKE_HOME": str(home), "LOOKALIKE_API_KEY": KEY,
               "LOOKALIKE_ALLOWED_ROOTS": str(root), "LOOKALIKE_LOG_LEVEL": "warning"}

        # 1 + 2: one `lookalike serve`
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start([sys.executable, "-m", "lookalike.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                     env, port)
        try:
            _, body = call(base, "/api/collections/trav/index", {"path": str(root / "trap")})
            job = wait_job(base, json.loads(body)["id"])
            report = job.get("report") or {}
            code, listing = call(base, "/api/collections/trav")
            count = json.loads(listing).get("count")
            outside_bytes = {p.read_bytes() for p in outside.iterdir()}
            served_outside = 0
            for image_id in range(1, 40):
                code, data = call(base, f"/api/collections/trav/images/{image_id}/file")
                served_outside += code == 200 and data in outside_bytes
            out["1_symlink_escape"] = {"indexed": count, "outside_files": 11,
                                       "skipped": report.get("skipped_by_reason"),
                                       "outside_files_served": served_outside}
            victim = root / "trap" / sorted(p.name for p in (root / "trap").glob("*.jpg"))[0]
            code, data = call(base, "/api/collections/trav/images/1/file")
            secret = outside / "secret.jpg"
            shutil.copy(photos[40], secret)
            victim.unlink()
            victim.symlink_to(secret)
            answers = {}
            for image_id in range(1, count + 1 if isinstance(count, int) else 5):
                code, data = call(base, f"/api/collections/trav/images/{image_id}/file")
                if data == secret.read_bytes() or code == 409:
                    answers["file"] = {"status": code, "served_the_outside_photo": data == secret.read_bytes()}
                    tcode, _ = call(base, f"/api/collections/trav/images/{image_id}/thumbnail")
                    answers["thumbnail_status"] = tcode
            out["2_swapped_file"] = answers
        finally:
            stop(proc)

        # 4: uvicorn --workers 2 on the same library
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        metrics_dir = work / "metrics"
        metrics_dir.mkdir()
        wenv = {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        proc = start([sys.executable, "-m", "uvicorn", "--factory", "lookalike.server.app:create_app", "--workers",
                      "2", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"], wenv, port)
        try:
            time.sleep(3)  # let both workers come up
            _, body = call(base, "/api/collections/w/index", {"path": str(root / "jobs"), "tags": ["poll"]})
            job_id = json.loads(body)["id"]
            polls = [call(base, f"/api/jobs/{job_id}")[0] for _ in range(20)]
            wait_job(base, job_id) if 200 in polls else time.sleep(5)
            for _ in range(10):
                call(base, "/healthz")
            pattern = r'lookalike_http_requests_total\{method="GET",route="/healthz",status="200"\} ([0-9.]+)'
            totals = []
            for _ in range(8):
                _, text = call(base, "/metrics")
                found = re.search(pattern, text.decode())
                totals.append(float(found.group(1)) if found else 0.0)
            ids = []
            for _ in range(4):
                code, body = call(base, "/api/collections/w2/index", {"path": str(root / "jobs")})
                ids.append(json.loads(body)["id"])
            jobs = {}
            deadline = time.monotonic() + 300
            while len(jobs) < len(set(ids)) and time.monotonic() < deadline:
                for job_id in set(ids) - set(jobs):
                    code, body = call(base, f"/api/jobs/{job_id}")
                    if code == 200 and json.loads(body)["state"] not in ("queued", "running"):
                        jobs[job_id] = json.loads(body)
                time.sleep(0.3)
            spans = sorted((j["started"], j["finished"]) for j in jobs.values())
            overlaps = sum(a[1] > b[0] for a, b in zip(spans, spans[1:], strict=False))
            embedded = sum((j.get("report") or {}).get("embedded", 0) for j in jobs.values())
            out["4_two_workers"] = {"job_polls_404": polls.count(404), "job_polls": len(polls),
                                    "healthz_totals_over_8_scrapes": sorted(set(totals)),
                                    "jobs_asked": len(ids), "distinct_jobs": len(set(ids)),
                                    "jobs_seen_finished": len(jobs), "overlapping_runs": overlaps,
                                    "files_embedded": embedded, "files_in_folder": 16}
        finally:
            stop(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=None if not args.json else 2))


if __name__ == "__main__":
    main()
