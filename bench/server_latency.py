"""Search latency and throughput of the HTTP service under concurrent clients, on loopback.

    python bench/server_latency.py [--images 200] [--clients 1,4] [--requests 200] [--max-seconds 60]
                                   [--workers 1,4]

Indexes the first N UKBench photos into a throw-away library, starts `lookalike serve` on 127.0.0.1 in a
subprocess, then for each client count sends multipart image searches (keep-alive, one connection per
client) until `--requests` are done or `--max-seconds` pass, whichever comes first. Prints a markdown
table (p50/p90/p99 latency, requests per second, errors) and the server's own per-step timings from
/metrics, so a slow request says where the time went. Bounded in requests and time by design.

`--workers 1,4` repeats the whole run against `serve --workers 1` and then `--workers 4` over the same
library, and prints the req/s ratio of the last worker count to the first at each client count (one run,
same machine, same load).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
BOUNDARY = "----lookalike-bench"


def multipart(data: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"q.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("server did not get ready")


def run_load(port: int, bodies: list[bytes], clients: int, requests: int, max_seconds: float,
             collection: str, k: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(requests))
    deadline = time.monotonic() + max_seconds
    path = f"/api/search?collection={collection}&k={k}"
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}

    def client() -> None:
        nonlocal errors
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < deadline:
            with lock:
                n = next(counter, None)
            if n is None:
                break
            start = time.perf_counter()
            try:
                conn.request("POST", path, body=bodies[n % len(bodies)], headers=headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except OSError:
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            elapsed = time.perf_counter() - start
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    errors += 1
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = [x * 1000 for x in latencies]
    return {"clients": clients, "requests": len(ms), "errors": errors, "seconds": round(wall, 2),
            "p50_ms": round(percentile(ms, 50), 1), "p90_ms": round(percentile(ms, 90), 1),
            "p99_ms": round(percentile(ms, 99), 1), "mean_ms": round(statistics.fmean(ms), 1) if ms else 0,
            "req_per_s": round(len(ms) / wall, 2) if wall else 0}


def server_steps(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    sums = dict(re.findall(r'lookalike_search_step_seconds_sum\{step="([^"]+)"\} ([0-9.e+-]+)', text))
    counts = dict(re.findall(r'lookalike_search_step_seconds_count\{step="([^"]+)"\} ([0-9.e+-]+)', text))
    return {step: round(float(sums[step]) / float(counts[step]) * 1000, 1) for step in sums if float(counts[step])}


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def ratios(rows: list[dict]) -> dict[int, float]:
    """req/s with the most workers over req/s with the fewest, per client count."""
    counts = sorted({r["workers"] for r in rows})
    first, last = counts[0], counts[-1]
    by = {(r["workers"], r["clients"]): r["req_per_s"] for r in rows}
    return {c: round(by[(last, c)] / by[(first, c)], 2)
            for (w, c) in by if w == first and by[(first, c)] and (last, c) in by}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED / "ukbench_first1000")
    parser.add_argument("--images", type=int, default=200, help="photos to index")
    parser.add_argument("--clients", default="1,4", help="comma-separated concurrent client counts")
    parser.add_argument("--requests", type=int, default=200, help="requests per client count (upper bound)")
    parser.add_argument("--max-seconds", type=float, default=60, help="time per client count (upper bound)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--model", default=None)
    parser.add_argument("--workers", default="1", help="comma-separated `serve --workers` counts, one server each")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args()

    files = sorted(args.data.glob("*.jpg"))[: args.images]
    if not files:
        sys.exit(f"no photos under {args.data}")
    home = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    proc = None
    try:
        photos = home / "photos"
        photos.mkdir()
        for f in files:
            shutil.copy(f, photos)
        env = {**os.environ, "LOOKALIKE_HOME": str(home), "LOOKALIKE_LOG_LEVEL": "warning"}
        index_cmd = [sys.executable, "-m", "lookalike.cli", "index", str(photos), "--collection", "bench"]
        if args.model:
            index_cmd += ["--model", args.model]
        started = time.perf_counter()
        subprocess.run(index_cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        index_seconds = time.perf_counter() - started
        bodies = [multipart(f.read_bytes()) for f in files[: min(len(files), 100)]]
        rows, steps = [], {}
        for workers in [int(w) for w in args.workers.split(",")]:
            port = free_port()
            metrics = Path(tempfile.mkdtemp(prefix="metrics-", dir=home))
            proc = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "serve", "--host", "127.0.0.1",
                                     "--port", str(port), "--workers", str(workers)],
                                    env={**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics)},
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_ready(port, proc)
            # warm the workers (each loads its own models): as many clients as workers, a few requests each
            run_load(port, bodies, workers, args.warmup * workers * 2, 120, "bench", args.k)
            for c in args.clients.split(","):
                rows.append({"workers": workers,
                             **run_load(port, bodies, int(c), args.requests, args.max_seconds, "bench", args.k)})
            steps[workers] = server_steps(port)
            stop(proc)
            proc = None
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(home, ignore_errors=True)

    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    ratio = ratios(rows) if len({r["workers"] for r in rows}) > 1 else {}
    if args.json:
        print(json.dumps({"machine": machine, "images": len(files), "index_seconds": round(index_seconds, 1),
                          "k": args.k, "runs": rows, "server_step_ms": steps, "req_per_s_ratio": ratio}, indent=2))
        return
    print(f"# lookalike search over HTTP: {len(files)} images, k={args.k}, {machine}\n")
    print("| workers | clients | requests | errors | p50 ms | p90 ms | p99 ms | mean ms | req/s |")
    print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r['workers']} | {r['clients']} | {r['requests']} | {r['errors']} | {r['p50_ms']} | "
              f"{r['p90_ms']} | {r['p99_ms']} | {r['mean_ms']} | {r['req_per_s']} |")
    for workers, per_step in steps.items():
        print(f"\nserver-side mean per search step with {workers} worker(s) (ms): "
              + ", ".join(f"{k} {v}" for k, v in per_step.items()))
    if ratio:
        counts = sorted({r["workers"] for r in rows})
        print(f"\nreq/s with {counts[-1]} workers / with {counts[0]}: "
              + ", ".join(f"{c} clients x{v}" for c, v in ratio.items()))


if __name__ == "__main__":
    main()
