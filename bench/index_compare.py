"""End-to-end `lookalike index` speed of several models in one run, interleaved, with ratios.

    python bench/index_compare.py [--models default,efficientnet-lite2] [--rounds 2] [--data DIR]

Each round indexes the same folder into a fresh library once per model (model files cached), in
turn, so slow phases of a shared machine hit every model alike. The figure is images embedded per
second of the whole `index` call (walk, read, hash, decode, embed, commit, refine). Prints markdown.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from PIL import Image

from lookalike import Library
from lookalike.embed import get_embedder

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def index_once(model_dir: Path, folder: Path, model: str) -> float:
    with tempfile.TemporaryDirectory() as home:
        (Path(home) / "models").symlink_to(model_dir, target_is_directory=True)
        with Library.open(home, model=model) as lib:
            report = lib.index([folder], "bench")
        assert not report.skipped, report.skipped[:3]
        return report.embedded / report.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED / "ukbench_first1000")
    ap.add_argument("--models", default="default,efficientnet-lite2")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    models = args.models.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "models"
        names = {m: get_embedder(m, model_dir).name for m in models}
        warm = Image.open(next(args.data.rglob("*.jpg"))).convert("RGB")
        for m in models:  # build/convert each model once, outside the timing
            get_embedder(m, model_dir).embed_images([warm])
        speeds: dict[str, list[float]] = {m: [] for m in models}
        for _ in range(args.rounds):
            for m in models:
                speeds[m].append(index_once(model_dir, args.data, m))
    count = sum(1 for _ in args.data.rglob("*.jpg"))
    base = statistics.median(speeds[models[-1]])
    print(f"{count} images from {args.data.name}; {args.rounds} rounds; cores: {os.cpu_count()}; "
          f"python {sys.version.split()[0]}")
    print(f"| model | img/s per round | median img/s | ratio to {names[models[-1]]} |")
    print("|---|---|---|---|")
    for m in models:
        med = statistics.median(speeds[m])
        print(f"| {names[m]} | {', '.join(f'{s:.1f}' for s in speeds[m])} | {med:.1f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
