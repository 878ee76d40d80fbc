"""Peak memory of the HTTP service under parallel searches with one huge, small-on-disk PNG (issue 20).

    python bench/decode_memory.py [--clients 16] [--rounds 2] [--side 7000] [--models DIR] [--json]

Indexes 20 UKBench photos into a throw-away library, starts `lookalike serve` on 127.0.0.1 in a subprocess
(any LOOKALIKE_* setting in the environment, e.g. LOOKALIKE_DECODE_MEMORY_MB, reaches it), warms it up
with one small search, then sends `--clients` searches at once, `--rounds` times, each with the same
SIDExSIDE PNG (a few flat shapes: ~200 KB on disk, 147 MB of RGB pixels). Reports the server's RSS when
idle, its peak (VmHWM, read from /proc, so nothing between two samples is missed), its RSS a few seconds
after the load, and how the requests were answered (200, or 503 + Retry-After when decoding is full).
`--models DIR` reuses a models folder (the ONNX graphs are otherwise built on first use).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from server_latency import wait_ready  # bench/ is on sys.path when a bench script runs

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
BOUNDARY = "----lookalike-bench"


def multipart(data: bytes, name: str = "q.png", ctype: str = "image/png") -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: {ctype}\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def big_png(side: int) -> bytes:
    """A SIDExSIDE RGB PNG of flat shapes: tiny on disk, side*side*3 bytes once decoded."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (side, side), (200, 180, 160))
    draw = ImageDraw.Draw(image)
    step = max(1, side // 10)
    for i in range(0, side, step):
        draw.ellipse((i, i // 2, i + side // 5, i // 2 + side // 8), fill=((i * 7) % 255, (i * 3) % 255, 90))
        draw.rectangle((side - i - side // 7, i, side - i, i + side // 20), fill=((i * 5) % 255, 100, 40))
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=9)
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in bytes."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def search(port: int, body: bytes, ctype: str = "image/png") -> tuple[int, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", "/api/search?collection=bench&k=5", body=multipart(body, ctype=ctype),
                     headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("Retry-After")
    except OSError as exc:
        return -1, type(exc).__name__
    finally:
        conn.close()


def parallel(port: int, body: bytes, clients: int) -> list[tuple[int, str | None]]:
    results: list[tuple[int, str | None]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def one() -> None:
        barrier.wait()
        answer = search(port, body)
        with lock:
            results.append(answer)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def measure(home: Path, png: bytes, clients: int, rounds: int, env: dict[str, str]) -> dict[str, object]:
    """Serve `home` (collection `bench` already indexed), load it, and report the server's memory."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "serve", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc, seconds=180)
        small = next(iter(sorted((home / "photos").glob("*.jpg")))).read_bytes()
        for _ in range(3):
            search(port, small, "image/jpeg")
        time.sleep(1.0)
        idle = proc_status(proc.pid)["VmRSS"]
        started = time.perf_counter()
        answers: list[tuple[int, str | None]] = []
        for _ in range(rounds):
            answers += parallel(port, png, clients)
        seconds = time.perf_counter() - started
        peak = proc_status(proc.pid)["VmHWM"]
        time.sleep(3.0)
        after = proc_status(proc.pid)["VmRSS"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    statuses = Counter(status for status, _ in answers)
    retry_after = sorted({ra for status, ra in answers if status == 503 and ra})
    mib = 1024 * 1024
    return {"clients": clients, "rounds": rounds, "seconds": round(seconds, 2),
            "idle_rss_mib": round(idle / mib), "peak_rss_mib": round(peak / mib),
            "peak_over_idle_mib": round((peak - idle) / mib), "rss_after_mib": round(after / mib),
            "statuses": dict(sorted(statuses.items())), "retry_after": retry_after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED / "ukbench_first1000")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--side", type=int, default=7000)
    parser.add_argument("--models", type=Path, default=None, help="a models folder to reuse")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    files = sorted(args.data.glob("*.jpg"))[:20]
    if not files:
        sys.exit(f"no photos under {args.data}")
    home = Path(tempfile.mkdtemp(prefix="lookalike-decode-mem-"))
    try:
        if args.models:
            (home / "models").symlink_to(args.models.resolve(), target_is_directory=True)
        photos = home / "photos"
        photos.mkdir()
        for f in files:
            shutil.copy(f, photos)
        env = {**os.environ, "LOOKALIKE_HOME": str(home), "LOOKALIKE_LOG_LEVEL": "warning"}
        subprocess.run([sys.executable, "-m", "lookalike.cli", "index", str(photos), "--collection", "bench"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        png = big_png(args.side)
        result = measure(home, png, args.clients, args.rounds, env)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    result.update({"png_bytes": len(png), "side": args.side,
                   "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                   "settings": {k: v for k, v in os.environ.items() if k.startswith("LOOKALIKE_DECODE")}})
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"# {args.clients} parallel searches x {args.rounds} with a {args.side}x{args.side} PNG "
          f"({len(png) // 1024} KB), {result['machine']}\n")
    print("| idle RSS MiB | peak RSS MiB | peak - idle MiB | RSS 3 s after MiB | seconds | answers |")
    print("|--:|--:|--:|--:|--:|:--|")
    print(f"| {result['idle_rss_mib']} | {result['peak_rss_mib']} | {result['peak_over_idle_mib']} | "
          f"{result['rss_after_mib']} | {result['seconds']} | {result['statuses']} |")


if __name__ == "__main__":
    main()
