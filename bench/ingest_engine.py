"""Local ingest against the distributed engine on this machine, over the same images, in one run.

    nice -n 10 python bench/ingest_engine.py [--data DIR] [--limit 1000] [--model default] [--engine-workers 0]

(a) `lookalike index` as it runs by default (`--engine local`: decode threads, batched inference here);
(b) `lookalike index --engine local-cluster` (a Dask cluster started on this machine for the run).
Each into a fresh library, sharing one models folder built beforehand. Prints one table: wall time,
img/s, the ratio to local, and where the time goes (`IndexReport.stages`: engine start-up, walk, write
and refine are wall seconds in the driver; read+decode and embed are busy seconds summed over decode
threads or engine workers, so they can add up to more than the wall time).

The engine only ever runs inside a network namespace with loopback alone: the script re-runs itself
under `unshare` unless it is in one already (../shared/ENGINES.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
NAMESPACE = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def in_loopback_namespace() -> bool:
    return socket.if_nameindex() == [(1, "lo")]


def run(home: Path, models: Path, folder: Path, model: str, engine: str):
    from lookalike import Library

    home.mkdir()
    (home / "models").symlink_to(models, target_is_directory=True)
    with Library.open(home, model=model) as lib:
        report = lib.index([folder], "bench", engine=engine)
    assert not report.skipped, report.skipped[:3]
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED / "ukbench_first1000")
    ap.add_argument("--limit", type=int, default=1000, help="photos from --data to use")
    ap.add_argument("--model", default="default")
    ap.add_argument("--engine-workers", type=int, default=0, help="worker processes of local-cluster (0: CPU count)")
    args = ap.parse_args()
    if not in_loopback_namespace():
        if os.environ.get("_INGEST_ENGINE_NS"):
            sys.exit("refusing to start an engine: not in a loopback-only network namespace")
        os.environ["_INGEST_ENGINE_NS"] = "1"
        os.execvp("unshare", [*NAMESPACE, sys.executable, *sys.argv])
    if args.engine_workers:
        os.environ["LOOKALIKE_ENGINE_WORKERS"] = str(args.engine_workers)

    from PIL import Image

    from lookalike.config import Settings
    from lookalike.embed import get_embedder
    from lookalike.engine import local_cluster_size

    files = sorted(args.data.rglob("*.jpg"))[: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        models = tmp_path / "models"
        models.mkdir()
        embedder = get_embedder(args.model, models)
        embedder.embed_images([Image.new("RGB", (64, 64))])  # builds the graphs once, outside both timings
        name = embedder.name
        folder = tmp_path / "photos"
        folder.mkdir()
        for f in files:
            shutil.copy(f, folder / f.name)
        local = run(tmp_path / "local", models, folder, args.model, "local")
        dist = run(tmp_path / "dist", models, folder, args.model, "local-cluster")
        settings = Settings.load(tmp_path)
    workers, threads = local_cluster_size(settings)
    print(f"{len(files)} images from {args.data.name}; model {name}; {os.cpu_count()} cores; local: "
          f"{settings.workers()} decode threads + inference here; local-cluster: {workers} Dask worker processes x "
          f"1 task thread, {threads} ONNX Runtime thread(s) each; batch {settings.batch_size}")
    print("| ingest | wall s | img/s | vs local | engine start s | walk s | read+decode s (busy) | embed s (busy) "
          "| write s | refine s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, r in (("local (in-process)", local), ("local-cluster (Dask)", dist)):
        st = r.stages
        ratio = r.images_per_second / local.images_per_second
        print(f"| {label} | {r.seconds:.1f} | {r.images_per_second:.1f} | {ratio:.2f}"
              f" | {st.get('engine_start', 0):.1f} | {st['walk']:.2f} | {st['read_decode']:.1f} | {st['embed']:.1f} "
              f"| {st['write']:.1f} | {st['refine']:.1f} |")
    assert local.count == dist.count == len(files)


if __name__ == "__main__":
    main()
