#!/usr/bin/env python3
"""Training variants on cached features (issue 16): how each recipe scores, chosen without the check.

The product's own pieces (`Trainer`, `split`, the view cache) on tf_flowers_1000, refinement (DBA +
query expansion, the collection's parameters) emulated in numpy on the trained vectors. Three figures:

* inner: 5-fold cross-validation inside the 750 training pictures (per class 30 queries a fold; the
  model trains on the other 600 labelled ones; the gallery is the 750). This is what choices are made
  on: no held-out picture is used, neither its label nor as a query. Self-supervised models train on
  all 1000 pictures without labels; their inner figure is the same folds' queries against the 750.
* held250: the 250 held-out pictures against all 1000; check50: every 5th of them (the acceptance
  check's queries). Reported, not chosen on.

    python bench/train_variants.py                          # every variant (tens of minutes on 2 cores)
    python bench/train_variants.py --only cosface,ssl-default --folds 2
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lookalike import Library
from lookalike.decode import decode, read_bytes
from lookalike.embed.base import l2_normalise
from lookalike.refine import RefineParams
from lookalike.train.data import Item, split
from lookalike.train.fit import Config, Data, Trainer
from lookalike.train.views import FeatureCache, view_features

FLOWERS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "tf_flowers_1000"
if not FLOWERS.is_dir():
    FLOWERS = Path.cwd().parent / "shared" / "datasets" / "tf_flowers_1000"


class Set:
    """The collection's vectors, views and labels, the acceptance split, refinement emulated."""

    def __init__(self, lib: Library, collection: str, views: int) -> None:
        ids, self.clean = lib.store.all_vectors(collection)
        records = lib.store.get(collection, ids.tolist())
        embedder = lib.collection_embedder(collection)
        cache = FeatureCache(lib.model_dir / "trained" / ".features", embedder.name)
        loaders = [(r.content_hash, lambda p=r.path: decode(read_bytes(Path(p), 1 << 30),
                                                            draft_size=embedder.draft_size)) for r in records]
        self.views = view_features(embedder, loaders, views, cache)
        self.paths = [r.path for r in records]
        self.hashes = [r.content_hash for r in records]
        names = [Path(p).parent.name for p in self.paths]
        self.classes = sorted(set(names))
        self.y = np.array([self.classes.index(n) for n in names])
        train, held = [], []
        for c in range(len(self.classes)):
            rows = sorted(np.flatnonzero(self.y == c), key=lambda i: Path(self.paths[i]).name)
            train += rows[:150]
            held += rows[150:200]
        self.train, self.held = np.array(train), np.array(held)
        self.refine = RefineParams.of(lib.store.collection(collection))

    def folds(self, k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        rng = np.random.default_rng(seed)
        per = [rng.permutation(self.train[self.y[self.train] == c]) for c in range(len(self.classes))]
        out = []
        for f in range(k):
            q = np.concatenate([p[f * 30:(f + 1) * 30] for p in per])
            out.append((np.setdiff1d(self.train, q), q))
        return out

    def map10(self, z: np.ndarray, queries: np.ndarray, gallery: np.ndarray | None = None) -> float:
        """mAP@10 (query excluded, AP = sum of P@r over hits / 10) with DBA + aQE as a collection does."""
        gallery = np.arange(len(z)) if gallery is None else gallery
        g = l2_normalise(z[gallery])
        p = self.refine
        if p.dba_k > 0:
            s = g @ g.T
            top = np.argsort(-s, 1)[:, :p.dba_k]
            w = np.clip(np.take_along_axis(s, top, 1), 0, None) ** p.dba_power
            g = l2_normalise(np.einsum("nk,nkd->nd", w, g[top]))
        v = l2_normalise(z[queries])
        if p.qe_k > 0:
            s = v @ g.T
            top = np.argsort(-s, 1)[:, :p.qe_k]
            w = np.clip(np.take_along_axis(s, top, 1), 0, None) ** p.qe_alpha
            v = l2_normalise(v + np.einsum("nk,nkd->nd", w, g[top]))
        s = v @ g.T
        s[gallery[None, :] == queries[:, None]] = -np.inf
        rel = self.y[gallery][np.argsort(-s, 1)[:, :10]] == self.y[queries][:, None]
        return float(((np.cumsum(rel, 1) / np.arange(1, 11)) * rel).sum(1).mean() / 10)


def supervised(s: Set, pool: np.ndarray, params: dict[str, Any]) -> Trainer:
    """The product's supervised run on `pool` (its 15% validation split, early stopping)."""
    views = params.get("views", 4)
    items = [Item(int(i), s.paths[i], s.hashes[i], s.classes[s.y[i]]) for i in pool]
    tr, va = split(items)
    order = np.array([i.image_id for i in tr + va])
    data = Data(clean=s.clean[order], views=s.views[order, :views], labels=s.y[order],
                train=np.arange(len(tr)), validation=np.arange(len(tr), len(order)))
    trainer = Trainer(Config(mode="supervised", **params), data)
    trainer.run()
    return trainer


def self_supervised(s: Set, params: dict[str, Any]) -> Trainer:
    views = params.get("views", 4)
    items = [Item(i, s.paths[i], s.hashes[i]) for i in range(len(s.paths))]
    tr, va = split(items)
    order = np.array([i.image_id for i in tr + va])
    data = Data(clean=s.clean[order], views=s.views[order, :views], labels=None,
                train=np.arange(len(tr)), validation=np.arange(len(tr), len(order)))
    trainer = Trainer(Config(mode="self-supervised", **params), data)
    trainer.run()
    return trainer


def view_whitening(s: Set, shrink: float) -> Callable[[np.ndarray], np.ndarray]:
    """Label-free linear map: whiten by the (shrunk) covariance of view-minus-picture differences."""
    diff = (s.views - s.clean[:, None]).reshape(-1, s.clean.shape[1])
    cw = diff.T @ diff / len(diff)
    cs = (1 - shrink) * np.eye(len(cw)) * np.trace(cw) / len(cw) + shrink * cw
    w, u = np.linalg.eigh(cs)
    t = (u / np.sqrt(w)) @ u.T
    return lambda x: x @ t


SUPERVISED = {
    "cosface": {},
    "cosface-margin0.35": {"margin": 0.35},
    "cosface-views8": {"views": 8},
    "cosface-dim512": {"dim": 512},
    "supcon": {"loss": "supcon", "lr": 3e-3},
}
SELF_SUPERVISED = {
    "ssl-default": {},
    "ssl-dim1024": {"dim": 1024},
    "ssl-dim1024-lr1e-3": {"dim": 1024, "lr": 1e-3},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default="/tmp/lookalike-bench-train")
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    wanted = set(filter(None, args.only.split(",")))
    lib = Library.open(args.home)
    if "fl" not in [c.name for c in lib.collections()]:
        lib.index([FLOWERS], "fl")
    views = max([p.get("views", 4) for n, p in SUPERVISED.items() if not wanted or n in wanted] + [4])
    s = Set(lib, "fl", views)
    folds = s.folds()[:args.folds]
    print("| variant | inner (5-fold in the 750) | held250 | check50 | time |\n|---|---|---|---|---|")

    def row(name: str, inner: list[float], z: np.ndarray, seconds: float) -> None:
        print(f"| {name} | {np.mean(inner):.3f} | {s.map10(z, s.held):.3f} | {s.map10(z, s.held[::5]):.3f} "
              f"| {seconds:.0f} s |", flush=True)

    if not wanted or "default" in wanted:
        row("default (no training)", [s.map10(s.clean, q, s.train) for _, q in folds], s.clean, 0)
    for name, params in SUPERVISED.items():
        if wanted and name not in wanted:
            continue
        start = time.monotonic()
        inner = [s.map10(supervised(s, tr, params).embed(s.clean), q, s.train) for tr, q in folds]
        row(name, inner, supervised(s, s.train, params).embed(s.clean), time.monotonic() - start)
    for name, params in SELF_SUPERVISED.items():
        if wanted and name not in wanted:
            continue
        start = time.monotonic()
        z = self_supervised(s, params).embed(s.clean)
        row(name, [s.map10(z, q, s.train) for _, q in folds], z, time.monotonic() - start)
    for shrink in (0.1, 0.3):
        name = f"view-whitening-{shrink}"
        if wanted and name not in wanted:
            continue
        z = view_whitening(s, shrink)(s.clean)
        row(name, [s.map10(z, q, s.train) for _, q in folds], z, 0)
    lib.close()


if __name__ == "__main__":
    main()
