"""Indexing throughput: model-only ONNX inference vs full `lookalike index` vs a naive loop, in one run.

    python bench/index_throughput.py [--limit 1000] [--large 24] [--model efficientnet-lite2]

(a) model-only: batched inference on already-preprocessed tensors (the ceiling);
(b) lookalike index: the real ingest path (walk, read, hash, decode in threads, batch, embed, commit);
(c) naive: open, resize and embed one image at a time, in one thread.
Run on the shared photos and on 12 MP photos made by upscaling a few of them. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from lookalike import Library
from lookalike.embed import get_embedder

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def model_only(embedder, files: list[Path], batch: int) -> float:
    prepared = [embedder.prepare(Image.open(f).convert("RGB")) for f in files]
    embedder.embed_prepared(prepared[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(prepared), batch):
        embedder.embed_prepared(prepared[i:i + batch])
    return len(prepared) / (time.perf_counter() - start)


def full_index(model_dir: Path, folder: Path, model: str) -> float:
    with tempfile.TemporaryDirectory() as home:
        (Path(home) / "models").symlink_to(model_dir, target_is_directory=True)
        lib = Library.open(home, model=model)
        report = lib.index([folder], "bench")
        lib.close()
        assert not report.skipped, report.skipped[:3]
        return report.embedded / report.seconds


def naive(embedder, files: list[Path]) -> float:
    start = time.perf_counter()
    for f in files:
        img = Image.open(f).convert("RGB")
        embedder.embed_prepared([embedder.prepare(img)])
    return len(files) / (time.perf_counter() - start)


def make_large(files: list[Path], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        Image.open(f).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC).save(
            out / f.name, quality=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED / "ukbench_first1000")
    ap.add_argument("--limit", type=int, default=1000, help="photos from --data to use")
    ap.add_argument("--large", type=int, default=24, help="12 MP photos to make by upscaling")
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    files = sorted(p for p in args.data.rglob("*.jpg"))[: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model_dir = tmp_path / "models"
        embedder = get_embedder(args.model, model_dir)
        small = tmp_path / "small"
        small.mkdir()
        for f in files:
            shutil.copy(f, small / f.name)
        large = tmp_path / "large"
        make_large(files[: args.large], large)
        rows = []
        for label, folder in ((f"shared photos ({len(files)}, <=288 px)", small),
                              (f"12 MP photos ({args.large})", large)):
            subset = sorted(folder.glob("*.jpg"))
            a = model_only(embedder, subset, args.batch)
            b = full_index(model_dir, folder, args.model)
            c = naive(embedder, subset)
            rows.append((label, a, b, c))
    print(f"model: {embedder.name}; cores: {os.cpu_count()}; batch {args.batch}; python {sys.version.split()[0]}")
    print("| images | (a) model-only img/s | (b) lookalike index img/s | (c) naive loop img/s | b/a | b/c |")
    print("|---|---|---|---|---|---|")
    for label, a, b, c in rows:
        print(f"| {label} | {a:.1f} | {b:.1f} | {c:.1f} | {b / a:.2f} | {b / c:.2f} |")


if __name__ == "__main__":
    main()
