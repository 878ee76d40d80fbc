#!/usr/bin/env python3
"""Model zoo benchmark: speed, vector size and retrieval quality of every embedder usable offline.

For each model: images/s (decode excluded: prepare + batched inference, batch 32), bytes per vector,
UKBench N-S score (mean number of the 4 views of an object in the top 4, query included; max 4) and
tf_flowers mAP@10 (query excluded; AP@10 = sum_{r<=10} P@r * rel(r) / 10). int8 models also get the
mean cosine of their vectors to the fp32 model's. Prints one markdown table (for docs/benchmarks.md).

    python bench/models.py                              # everything, full data sets (slow on 2 cores)
    python bench/models.py --limit 200 --models phash,efficientnet-lite0
    python bench/models.py --text-recall efficientnet-lite2   # Flickr8k-1000 caption -> image R@1/5/10
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.embed import Embedder, get_embedder, model_cards

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
if not SHARED.is_dir():
    SHARED = Path.cwd().parent / "shared" / "datasets"


def load_ukbench(limit: int | None) -> tuple[list[Path], np.ndarray]:
    root = SHARED / "ukbench_first1000"
    files = sorted(root.glob("ukbench*.jpg"))
    files = files[: (limit // 4) * 4] if limit else files
    return files, np.array([int(f.stem[7:]) // 4 for f in files])


def load_flowers(limit: int | None) -> tuple[list[Path], np.ndarray]:
    root = SHARED / "tf_flowers_1000"
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if limit:
        rows = rows[:: max(1, len(rows) // limit)][:limit]  # spread over the classes (rows are sorted by class)
    names = sorted({r["label"] for r in rows})
    return [root / r["image"] for r in rows], np.array([names.index(r["label"]) for r in rows])


def similarity(vecs: np.ndarray, metric: str, bits: int) -> np.ndarray:
    if metric == "hamming":
        xor = np.bitwise_xor(vecs[:, None, :], vecs[None, :, :])
        return 1.0 - np.unpackbits(xor, axis=2).sum(axis=2) / bits
    return vecs @ vecs.T


def ns_score(sim: np.ndarray, labels: np.ndarray) -> float:
    top = np.argsort(-sim, axis=1, kind="stable")[:, :4]
    return float((labels[top] == labels[:, None]).sum(axis=1).mean())


def map_at_10(sim: np.ndarray, labels: np.ndarray) -> float:
    sim = sim.copy()
    np.fill_diagonal(sim, -np.inf)
    rel = (labels[np.argsort(-sim, axis=1, kind="stable")[:, :10]] == labels[:, None]).astype(float)
    precision = np.cumsum(rel, axis=1) / np.arange(1, 11)
    return float((precision * rel).sum(axis=1).mean() / 10)


def embed(emb: Embedder, files: list[Path], batch: int = 32) -> tuple[np.ndarray, float]:
    images = [Image.open(f).convert("RGB") for f in files]  # decoded up front: not timed
    start = time.perf_counter()
    out = [emb.embed_prepared([emb.prepare(i) for i in images[j:j + batch]]) for j in range(0, len(images), batch)]
    return np.concatenate(out), len(images) / (time.perf_counter() - start)


def text_recall(name: str, cache: Path, threads: int, every: int) -> None:
    """Caption -> image recall@1/5/10 on Flickr8k-1000 through the model's `embed_text` (all 1000 images)."""
    root = SHARED / "flickr8k_1000"
    with open(root / "captions.csv", newline="") as f:
        rows = list(csv.DictReader(f))[::every]
    files = sorted((root / "images").glob("*.jpg"))
    index = {f.name: i for i, f in enumerate(files)}
    emb = get_embedder(name, cache, threads=threads)
    images, _ = embed(emb, files)
    if name.startswith("efficientnet-lite") and type(emb).embed_text is Embedder.embed_text:
        from lookalike.embed.text_fallback import embed_text_efficientnet  # until efficientnet.py wires it

        queries = embed_text_efficientnet(emb.variant, [r["caption"] for r in rows], cache)  # type: ignore[attr-defined]
    else:
        queries = emb.embed_text([r["caption"] for r in rows])
    sim = queries @ images.T
    truth = np.array([index[r["image"]] for r in rows])
    rank = (sim > sim[np.arange(len(rows)), truth][:, None]).sum(axis=1)
    recalls = " | ".join(f"{(rank < k).mean():.3f}" for k in (1, 5, 10))
    print(f"| {name} | {len(rows)} captions | {recalls} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="", help="comma-separated names (default: every model available offline)")
    ap.add_argument("--limit", type=int, default=0, help="images per data set (0: all 1000)")
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "lookalike-bench-models")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    ap.add_argument("--text-recall", default="", help="instead: Flickr8k caption->image recall of this model")
    ap.add_argument("--every", type=int, default=1, help="with --text-recall: every n-th caption")
    args = ap.parse_args()
    if args.text_recall:
        text_recall(args.text_recall, args.cache, args.threads, args.every)
        return
    names = [n for n in args.models.split(",") if n] or [c.name for c in model_cards() if c.available]
    uk_files, uk_labels = load_ukbench(args.limit or None)
    fl_files, fl_labels = load_flowers(args.limit or None)
    rows: list[dict] = []
    fp32: dict[str, np.ndarray] = {}
    for name in names:
        emb = get_embedder(name, args.cache, threads=args.threads)
        uk, speed_uk = embed(emb, uk_files)
        fl, speed_fl = embed(emb, fl_files)
        bits = emb.dim
        row = {"model": name, "img/s": round((speed_uk + speed_fl) / 2, 1),
               "bytes/vector": bits // 8 if emb.metric == "hamming" else bits * 4,
               "UKBench N-S": round(ns_score(similarity(uk, emb.metric, bits), uk_labels), 3),
               "flowers mAP@10": round(map_at_10(similarity(fl, emb.metric, bits), fl_labels), 3),
               "cos to fp32": ""}
        if name.endswith("-int8") and name[:-5] in fp32:
            row["cos to fp32"] = round(float((fp32[name[:-5]] * uk).sum(axis=1).mean()), 4)
        fp32[name] = uk
        rows.append(row)
        print(json.dumps(row), flush=True)
    cols = list(rows[0])
    print(f"\nUKBench: {len(uk_files)} images, tf_flowers: {len(fl_files)} images, threads={args.threads or 'all'}\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
