"""Groups of copies in a whole collection: candidates from the vector index, verified, then joined.

    report = find_groups(store, "photos", load_image)        # -> DupesReport (groups with evidence)

1. Exact duplicates: rows with the same content hash (sha256 of the bytes) join at no cost.
2. Candidates: every row's `depth` nearest neighbours through an index built for the all-pairs pass
   (candidates.py: PCA-reduced vectors at scale; vectors streamed in chunks), searched with the
   row's vector and (when given) its picture's 90-degree view, scored by plain cosine and kept when
   at least `min_cosine` (among the `NEAR_RANKS` nearest: `NEAR_MIN_COSINE`). The depth and the
   thresholds were measured on edited copies (`bench/copies.py`).
3. Verification (`verify.py`) of each candidate pair, picture by picture so its features stay cached
   (LRU); a pair whose images are already in one group is not verified again.
4. Union-find over the verified pairs, never across a "not duplicates" decision (`decisions.py`);
   groups made only of pictures in a resolved group are left out.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..search import Hit
from ..store import ImageRecord, Store
from . import candidates, verify
from .decisions import Decisions

DEPTH = 30  # nearest neighbours per image searched for copies (bench/copies.py: depth measured)
MIN_COSINE = 0.38  # candidates below this cosine (plain or turned view) are not verified...
NEAR_RANKS, NEAR_MIN_COSINE = 3, 0.3  # ...except among the 3 nearest, down to 0.3 (heavily edited copies)
CHUNK = 256  # rows whose neighbours are searched at once
FEATURE_CACHE = 512  # images whose local features are kept in memory (about 0.3 MB each)

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)
LoadImage = Callable[[ImageRecord], Image.Image | None]  # None: unreadable (the row is skipped)
ExtraViews = Callable[[list[int]], np.ndarray | None]  # more query vectors for these ids (one row each)


@dataclass
class Evidence:
    a: int
    b: int
    comparison: verify.Comparison

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, **self.comparison.to_dict()}


@dataclass
class Group:
    images: list[ImageRecord]
    evidence: list[Evidence]

    @property
    def ids(self) -> list[int]:
        return [r.id for r in self.images]  # type: ignore[misc]

    @property
    def hashes(self) -> set[str]:
        return {r.content_hash for r in self.images if r.content_hash}

    def to_dict(self) -> dict[str, Any]:
        return {"images": [{"id": r.id, "path": r.path, "width": r.width, "height": r.height, "size": r.size,
                            "mtime": r.mtime, "content_hash": r.content_hash} for r in self.images],
                "evidence": [e.to_dict() for e in self.evidence]}


@dataclass
class DupesReport:
    collection: str
    groups: list[Group] = field(default_factory=list)
    images: int = 0
    exact_pairs: int = 0
    candidate_pairs: int = 0
    verified_pairs: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (id, reason) of unreadable images
    left_out: int = 0  # groups not reported because the user resolved them
    seconds: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, keep: str | None = None) -> dict[str, Any]:
        """As JSON; with a keep policy (`best`, ...), each group also names the image it would keep."""
        groups = [g.to_dict() for g in self.groups]
        if keep is not None:
            from .actions import choose_keeper

            for group, out in zip(self.groups, groups, strict=True):
                out["keep"] = choose_keeper(group, keep).id
        return {"collection": self.collection, "groups": groups,
                "stats": {"images": self.images, "groups": len(self.groups),
                          "images_in_groups": sum(len(g.images) for g in self.groups),
                          "exact_pairs": self.exact_pairs, "candidate_pairs": self.candidate_pairs,
                          "verified_pairs": self.verified_pairs, "resolved_groups_left_out": self.left_out,
                          "seconds": {k: round(v, 3) for k, v in self.seconds.items()}},
                "skipped": [{"id": i, "reason": r} for i, r in self.skipped], "params": self.params}


class UnionFind:
    """Union-find over ids that refuses a union joining two pictures marked "not duplicates"."""

    def __init__(self, forbidden: dict[str, set[str]] | None = None) -> None:
        self.parent: dict[int, int] = {}
        self.hashes: dict[int, set[str]] = {}  # root -> content hashes of its members (when forbidden)
        self.forbidden = forbidden or {}

    def find(self, x: int) -> int:
        parent = self.parent
        root = parent.setdefault(x, x)
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def can_join(self, a: int, b: int) -> bool:
        if not self.forbidden:
            return True
        ha, hb = self.hashes.get(self.find(a), set()), self.hashes.get(self.find(b), set())
        small, big = (ha, hb) if len(ha) <= len(hb) else (hb, ha)
        return not any(self.forbidden.get(h, set()) & big for h in small)

    def add_hash(self, x: int, h: str) -> None:
        if self.forbidden and h:
            self.hashes.setdefault(self.find(x), set()).add(h)

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if not self.can_join(a, b):
            return False
        self.parent[rb] = ra
        if self.forbidden:
            self.hashes.setdefault(ra, set()).update(self.hashes.pop(rb, set()))
        return True


class FeatureCache:
    """LRU cache of `verify.Features` by image id; loads through `load_image`."""

    def __init__(self, records: Callable[[int], ImageRecord], load_image: LoadImage, size: int = FEATURE_CACHE):
        self.records, self.load_image, self.size = records, load_image, size
        self._cache: OrderedDict[int, verify.Features | None] = OrderedDict()
        self.failed: dict[int, str] = {}

    def get(self, image_id: int) -> verify.Features | None:
        if image_id in self._cache:
            self._cache.move_to_end(image_id)
            return self._cache[image_id]
        if image_id in self.failed:
            return None
        feats = None
        try:
            image = self.load_image(self.records(image_id))
            if image is None:
                self.failed[image_id] = "unreadable"
            else:
                feats = verify.extract(image)
        except Exception as exc:  # a file deleted or changed since indexing: skip it, say why
            self.failed[image_id] = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if feats is not None:
            self._cache[image_id] = feats
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return feats


def candidate_pairs(store: Store, collection: str, ids: list[int], *, depth: int = DEPTH,
                    min_cosine: float = MIN_COSINE, chunk: int = CHUNK, progress: ProgressFn | None = None,
                    extra_views: ExtraViews | None = None, seconds: dict[str, float] | None = None,
                    reduce_above: int = candidates.REDUCE_ABOVE) -> candidates.Candidates:
    """Every pair where one is among the other's `depth` nearest neighbours and the cosine is at least
    `min_cosine` (among the `NEAR_RANKS` nearest: `NEAR_MIN_COSINE`), with that cosine.
    `extra_views(ids)`, if given, returns more query vectors for those rows (e.g. their pictures
    turned by 90 degrees: cache.py), one row each (zeros: none); their neighbours are candidates too,
    scored by the view's cosine. Cosine collections: through an index of the plain vectors built for
    the all-pairs pass (candidates.py); others: through the collection's own index."""
    metric, _ = store.collection_settings(collection)
    if metric == "cosine":
        params = candidates.CandidateParams(depth, min_cosine, NEAR_RANKS, NEAR_MIN_COSINE, reduce_above=reduce_above)
        return candidates.candidate_pairs(ids, lambda batch: store.vectors(collection, batch), params,
                                          views_of=extra_views, progress=progress, seconds=seconds)
    pairs: dict[tuple[int, int], float] = {}
    k = min(depth + 1, max(1, len(ids)))
    for start in range(0, len(ids), chunk):
        batch = ids[start:start + chunk]
        scores, found = store.search(collection, store.vectors(collection, batch), k)
        for row, qid in enumerate(batch):
            rank = 0
            for col in range(found.shape[1]):
                j = int(found[row, col])
                if j < 0 or j == qid:
                    continue
                rank += 1
                key = (qid, j) if qid < j else (j, qid)
                cos = float(scores[row, col])
                if key not in pairs and (cos >= min_cosine or (rank <= NEAR_RANKS and cos >= NEAR_MIN_COSINE)):
                    pairs[key] = cos
        if progress:
            progress("candidates", min(start + chunk, len(ids)), len(ids))
    keys = sorted(pairs)
    return candidates.Candidates(np.array([a for a, _ in keys], np.int64), np.array([b for _, b in keys], np.int64),
                                 np.array([pairs[k] for k in keys], np.float32))


def find_groups(store: Store, collection: str, load_image: LoadImage, *, depth: int = DEPTH,
                min_cosine: float = MIN_COSINE, decisions: Decisions | None = None,
                progress: ProgressFn | None = None, chunk: int = CHUNK, verify_pairs: bool = True,
                compare_fn: Callable[[verify.Features, verify.Features, float], verify.Comparison] | None = None,
                extra_views: ExtraViews | None = None) -> DupesReport:
    """Every group of copies in `collection`. `load_image(record)` gives a record's picture (the
    caller decides how: a file, stored bytes); `verify_pairs=False` groups exact duplicates only."""
    started = time.perf_counter()
    report = DupesReport(collection, params={"depth": depth, "min_cosine": min_cosine,
                                             "duplicate_at": verify.DUPLICATE_AT})
    ids = sorted(store.find_ids(collection))
    report.images = len(ids)
    forbidden = decisions.not_duplicates() if decisions else {}
    resolved = decisions.resolved() if decisions else []
    uf = UnionFind(forbidden)
    records: dict[int, ImageRecord] = {}
    by_hash: dict[str, int] = {}
    evidence: list[Evidence] = []
    for start in range(0, len(ids), 4096):
        for r in store.get(collection, ids[start:start + 4096]):
            records[r.id] = r  # type: ignore[index]
            uf.add_hash(r.id, r.content_hash)  # type: ignore[arg-type]
            first = by_hash.setdefault(r.content_hash, r.id) if r.content_hash else r.id  # type: ignore[arg-type]
            if first != r.id and uf.union(first, r.id):  # type: ignore[arg-type]
                report.exact_pairs += 1
                evidence.append(Evidence(first, r.id, verify.identical()))  # type: ignore[arg-type]
    report.seconds["exact"] = time.perf_counter() - started

    if verify_pairs and len(ids) > 1:
        t0 = time.perf_counter()
        steps: dict[str, float] = {}
        pairs = candidate_pairs(store, collection, ids, depth=depth, min_cosine=min_cosine, chunk=chunk,
                                progress=progress, extra_views=extra_views, seconds=steps)
        report.candidate_pairs = len(pairs)
        report.seconds["candidates"] = time.perf_counter() - t0
        report.seconds.update({f"candidates.{k}": v for k, v in steps.items()})
        t0 = time.perf_counter()
        cache = FeatureCache(records.__getitem__, load_image)
        # picture by picture (its features stay cached), strongest candidate first
        order = np.lexsort((-pairs.cosine, pairs.a))
        compare = compare_fn or (lambda fa, fb, cos: verify.compare_features(fa, fb, cosine=cos))
        total = len(order)
        for n, p in enumerate(order.tolist(), 1):
            a, b, cos = int(pairs.a[p]), int(pairs.b[p]), float(pairs.cosine[p])
            if uf.find(a) != uf.find(b) and uf.can_join(a, b):
                fa, fb = cache.get(a), cache.get(b)
                if fa is not None and fb is not None:
                    c = compare(fa, fb, cos)
                    report.verified_pairs += 1
                    if c.is_copy and uf.union(a, b):
                        evidence.append(Evidence(a, b, c))
            if progress and (n % 50 == 0 or n == total):
                progress("verifying", n, total)
        report.skipped = sorted(cache.failed.items())
        report.seconds["verify"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    members: dict[int, list[int]] = {}
    for i in ids:
        if i in uf.parent:
            members.setdefault(uf.find(i), []).append(i)
    ev_of: dict[int, list[Evidence]] = {}
    for e in evidence:
        ev_of.setdefault(uf.find(e.a), []).append(e)
    for root, group_ids in members.items():
        if len(group_ids) < 2:
            continue
        group = Group([records[i] for i in sorted(group_ids)], ev_of.get(root, []))
        if resolved and any(group.hashes <= r for r in resolved):
            report.left_out += 1
            continue
        report.groups.append(group)
    report.groups.sort(key=lambda g: (-len(g.images), g.ids[0]))
    report.seconds["group"] = time.perf_counter() - t0
    report.seconds["total"] = time.perf_counter() - started
    return report


@dataclass
class CopyHit(Hit):
    """A search hit verified as a copy of the query: `score` is the copy confidence."""

    comparison: verify.Comparison | None = None

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if self.comparison is not None:
            d["similarity"] = None if self.comparison.cosine is None else round(self.comparison.cosine, 6)
            d["copy"] = self.comparison.to_dict()
        return d


def copies_of(features: verify.Features, candidates: list[tuple[int, float]], cache: FeatureCache
              ) -> list[tuple[int, verify.Comparison]]:
    """The verified copies among `candidates` ((id, cosine), e.g. a search's hits), best first."""
    out = []
    for image_id, cos in candidates:
        other = cache.get(image_id)
        if other is None:
            continue
        c = verify.compare_features(features, other, cosine=cos)
        if c.is_copy:
            out.append((image_id, c))
    out.sort(key=lambda t: -t[1].score)
    return out
