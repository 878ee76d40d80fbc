"""Rotation: photos stored sideways with no EXIF tag. Does a rotation-invariant query help, and what
does it cost on upright queries?

    python bench/rotation.py [--every 2]

UKBench-1000 is indexed upright with the default settings; each query picture is turned 90 degrees
(pixels rotated, no EXIF) and searched plainly and with `rotation_invariant=True` (mean of the four
rotations' embeddings). Upright queries are searched both ways too, on UKBench (N-S) and tf_flowers
(mAP@10), to see the cost where nothing is rotated. Prints a markdown table with per-query latency.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike import Library
from lookalike.eval.metrics import average_precision

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def turned(path: Path) -> bytes:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def ukbench_ns(lib: Library, queries: list[Path], *, rotate: bool, invariant: bool) -> tuple[float, float]:
    scores, times = [], []
    for path in queries:
        query = turned(path) if rotate else path
        t0 = time.perf_counter()
        hits = lib.search(query, k=4, collection="uk", rotation_invariant=invariant)
        times.append(time.perf_counter() - t0)
        scores.append(sum(int(Path(h.path).stem[7:]) // 4 == int(path.stem[7:]) // 4 for h in hits))
    return float(np.mean(scores)), 1000 * float(np.median(times))


def flowers_map(lib: Library, queries: list[Path], *, invariant: bool) -> float:
    """mAP@10, query excluded; relevant = the other pictures of the query's class folder."""
    aps = []
    for path in queries:
        ranked = [h.path for h in lib.search(path, k=11, collection="fl", rotation_invariant=invariant)
                  if h.path != str(path)]
        relevant = {str(p) for p in path.parent.glob("*.jpg")} - {str(path)}
        aps.append(average_precision(ranked, relevant, 10))
    return float(np.mean(aps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--every", type=int, default=2, help="use every n-th picture as a query")
    ap.add_argument("--models-dir", type=Path, default=None)
    args = ap.parse_args()
    uk = sorted((SHARED / "ukbench_first1000").glob("*.jpg"))
    fl = sorted((SHARED / "tf_flowers_1000").glob("*/*.jpg"))
    with tempfile.TemporaryDirectory() as home:
        lib = Library(Path(home), model_dir=args.models_dir)
        lib.index(uk, "uk")
        lib.index(fl, "fl")
        q_uk, q_fl = uk[::args.every], fl[::args.every]
        rows = [
            ("UKBench, query turned 90 deg", "N-S", *ukbench_ns(lib, q_uk, rotate=True, invariant=False),
             *ukbench_ns(lib, q_uk, rotate=True, invariant=True)),
            ("UKBench, upright query", "N-S", *ukbench_ns(lib, q_uk, rotate=False, invariant=False),
             *ukbench_ns(lib, q_uk, rotate=False, invariant=True)),
        ]
        fl_plain, fl_inv = flowers_map(lib, q_fl, invariant=False), flowers_map(lib, q_fl, invariant=True)
        lib.close()
    print(f"default model and settings; {len(q_uk)} UKBench and {len(q_fl)} flowers queries; "
          "latency = median ms per query including embedding")
    print("| queries | metric | plain query | rotation-invariant query | ms plain | ms invariant |")
    print("|---|---|---|---|---|---|")
    for label, metric, plain, ms_plain, inv, ms_inv in rows:
        print(f"| {label} | {metric} | {plain:.3f} | {inv:.3f} | {ms_plain:.1f} | {ms_inv:.1f} |")
    print(f"| tf_flowers, upright query | mAP@10 | {fl_plain:.3f} | {fl_inv:.3f} | | |")


if __name__ == "__main__":
    main()
