"""Augmented views of a picture, embedded once by the frozen backbone and cached.

Training runs on a CPU in minutes because the backbone (the collection's pretrained model, ONNX) is
never trained: every training image is turned into `views` random augmentations (resized crop, flip,
colour jitter, greyscale, blur, small rotation), each is embedded once, and the vectors are kept under
`<library>/models/trained/.features/<base model>/` (one .npy per picture content hash). Every epoch, and
every later run on the same pictures (supervised and self-supervised, retrains, --resume), reuses them.
The views of a picture are a pure function of its content hash and the view number, so a cache entry
is valid for any run. No torch here.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from ..embed.base import Embedder

AUG_VERSION = 1  # bump when `augment` changes, so cached views are rebuilt


def augment(image: Image.Image, rng: random.Random) -> Image.Image:
    """One random view: the recipe of SimCLR / MoCo v2 (milder crops, plus small rotations)."""
    image = image.convert("RGB")
    w, h = image.size
    area = w * h
    for _ in range(10):  # random resized crop: 30-100% of the area, aspect 3/4..4/3
        target = area * rng.uniform(0.30, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
            image = image.crop((left, top, left + cw, top + ch))
            break
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    if rng.random() < 0.3:
        image = image.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR, expand=False)
    if rng.random() < 0.8:  # colour jitter, in random order
        ops = [(ImageEnhance.Brightness, 0.4), (ImageEnhance.Contrast, 0.4), (ImageEnhance.Color, 0.4)]
        rng.shuffle(ops)
        for op, strength in ops:
            image = op(image).enhance(rng.uniform(1 - strength, 1 + strength))
        if rng.random() < 0.5:  # small hue shift
            hsv = np.asarray(image.convert("HSV")).copy()
            hsv[..., 0] = (hsv[..., 0].astype(np.int16) + rng.randint(-8, 8)) % 256
            image = Image.fromarray(hsv, "HSV").convert("RGB")
    if rng.random() < 0.2:
        image = ImageOps.grayscale(image).convert("RGB")
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.1, 2.0)))
    return image


def view_seed(content_hash: str, view: int) -> int:
    return int(hashlib.sha1(f"{content_hash}:{view}:{AUG_VERSION}".encode()).hexdigest()[:12], 16)


class FeatureCache:
    """Backbone vectors of augmented views, one file per picture: (views, dim) float16."""

    def __init__(self, root: Path, base_model: str) -> None:
        safe = base_model.replace("/", "_").replace("*", "x")
        self.folder = root / safe / f"aug-v{AUG_VERSION}"

    def path(self, content_hash: str) -> Path:
        return self.folder / content_hash[:2] / f"{content_hash}.npy"

    def get(self, content_hash: str, views: int) -> np.ndarray | None:
        path = self.path(content_hash)
        try:
            arr = np.load(path)
        except (OSError, ValueError):
            return None
        return arr[:views].astype(np.float32) if arr.shape[0] >= views else None

    def put(self, content_hash: str, vectors: np.ndarray) -> None:
        path = self.path(content_hash)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.npy")
        np.save(tmp, vectors.astype(np.float16))
        os.replace(tmp, path)


def view_features(embedder: Embedder, items: list[tuple[str, Callable[[], Image.Image]]], views: int,
                  cache: FeatureCache, *, batch: int = 32, workers: int = 2,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(N, views, dim) backbone vectors of `views` augmentations of each (content hash, picture loader)."""
    out = np.zeros((len(items), views, embedder.dim), dtype=np.float32)
    todo = []
    for n, (content_hash, _) in enumerate(items):
        cached = cache.get(content_hash, views)
        if cached is not None:
            out[n] = cached
        else:
            todo.append(n)
    done = len(items) - len(todo)
    if progress:
        progress(done, len(items))

    def prepared(n: int) -> list:
        content_hash, load = items[n]
        picture = load()
        return [embedder.prepare(augment(picture, random.Random(view_seed(content_hash, v)))) for v in range(views)]

    per_batch = max(1, batch // views)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(todo), per_batch):
            chunk = todo[start:start + per_batch]
            inputs = list(pool.map(prepared, chunk))
            vectors = embedder.embed_prepared([x for group in inputs for x in group])
            for j, n in enumerate(chunk):
                out[n] = vectors[j * views:(j + 1) * views]
                cache.put(items[n][0], out[n])
            done += len(chunk)
            if progress:
                progress(done, len(items))
    return out
