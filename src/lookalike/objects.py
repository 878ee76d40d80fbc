"""Object-aware search (issue 17): search with the regions of a picture, index the regions of each image.

Query side (`Library.search(objects=True)` / `box=`): the picture's regions (`pick_regions`: detector
boxes, class-agnostic edge proposals and a coarse window grid) are embedded with the whole picture,
each is searched, and results are merged per image: an image's score is its best match, and the
region that made it is returned as `query_box`. `box=` searches with exactly one crop.

Index side (`Library.index(regions="objects")`): each image keeps its whole-picture row in the
collection and gets one row per region in the companion collection `<name>~regions` (names.regions_of)
holding the region's plain vector, its box and its image's id (path `region:<image id>:<n>`,
`content_hash` = the image's). Why a companion collection and not more rows in the collection itself:
- refinement stays exactly what it was: DBA computes each image's augmented vector from its nearest
  *images*; region rows among them would be the image's own crops (cosine ~0.9) and would pull every
  vector towards itself, and query expansion would average a query with crops of one image. The
  companion is a plain collection (no DBA, no expansion), so region scores are plain cosines;
- a row is an image everywhere else (count, info, dupes, filters, /file): region rows must not be;
- it goes through the Store interface only (upsert/remove/search/known_files), so any backend has it.
`sync_regions` reconciles the companion with the collection after every write (index, add, replace,
remove, dupes): regions of removed images are removed, images that are new or whose bytes changed
(content hash) get theirs (re-)computed. Search ignores a region whose image is gone or changed, so
even a write made behind the library's back never returns a stale region. An image with no region
gets one marker row (zero vector, `none`), so it is not re-detected on every run.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .detect import Box, Region
from .detect.proposals import dedupe, edge_boxes, windows
from .embed import Embedder
from .errors import LookalikeError, UnknownCollection
from .names import regions_of
from .store import Filter, ImageRecord, Store

log = logging.getLogger("lookalike")
REGION_MODES = ("objects",)
MIN_SIDE = 24  # pixels: a smaller crop carries too little for the embedder
MIN_AREA = 0.04  # of the picture
MAX_AREA = 0.8  # a region nearly the whole picture adds nothing to the whole-picture vector
BATCH = 16  # images per write while indexing regions
INDEX_LIMIT = 10  # regions stored per image (a query may use more: QUERY_LIMIT)
# a query region's hit must beat the whole query's by this much (search --objects): on ordinary photos a
# crop of the object now and then finds another object slightly better; pasted-object scenes gain far
# more. Measured (bench/objects.py data): UKBench N-S with --objects 3.96 at 0, 3.98 at 0.07 (plain 3.99),
# scene recall@1 0.95 at both
QUERY_MARGIN = 0.07
QUERY_LIMIT = 16
_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX_RE = re.compile(f"^{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}$")


class BadBox(LookalikeError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="bad-box")


def parse_box(value: str | Iterable[float] | None) -> tuple[float, float, float, float] | None:
    """'x0,y0,x1,y1' (pixels) or four numbers -> a tuple; BadBox (one line) for anything else."""
    if value is None:
        return None
    if isinstance(value, str):
        m = _BOX_RE.match(value)
        if not m:
            raise BadBox(f"bad box '{value[:40]}': give x0,y0,x1,y1 in pixels of the query picture, "
                         "e.g. 120,40,380,300")
        return tuple(float(g) for g in m.groups())  # type: ignore[return-value]
    if not isinstance(value, list | tuple):
        raise BadBox("bad box: give x0,y0,x1,y1 in pixels of the query picture, e.g. 120,40,380,300")
    numbers = list(value)
    if len(numbers) != 4 or not all(isinstance(n, int | float) and np.isfinite(n) for n in numbers):
        raise BadBox("bad box: give four numbers x0,y0,x1,y1 in pixels of the query picture")
    return tuple(float(n) for n in numbers)  # type: ignore[return-value]


def check_box(box: tuple[float, float, float, float], width: int, height: int) -> Box:
    """The box as integer pixels if it lies inside a width x height picture with an area; else BadBox."""
    x0, y0, x1, y1 = box
    shown = ",".join(f"{v:g}" for v in box)
    if min(box) < 0:
        raise BadBox(f"box {shown} has a negative coordinate: coordinates are pixels from the top-left corner")
    if x1 <= x0 or y1 <= y0:
        raise BadBox(f"box {shown} has no area: give x0,y0,x1,y1 with x1 > x0 and y1 > y0")
    if x1 > width or y1 > height:
        raise BadBox(f"box {shown} lies outside the {width}x{height} picture")
    out = (int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1)))
    if out[2] <= out[0] or out[3] <= out[1]:
        raise BadBox(f"box {shown} has no area once rounded to pixels")
    return out


def pick_regions(image: Image.Image, detect: Callable[[Image.Image], list[Region]] | None, *,
                 limit: int = QUERY_LIMIT) -> list[Region]:
    """The regions of a picture worth a vector, best first: detector boxes, then edge/colour proposals,
    then a 2-scale window grid (measured in bench/objects.py: each source finds objects the others miss,
    the grid most of the non-COCO ones); near-duplicates (IoU > 0.7) and tiny or near-whole boxes dropped."""
    width, height = image.size
    found: list[Region] = []
    if detect is not None:
        found += detect(image)[:6]
    found += edge_boxes(image, limit=4)
    found += windows(width, height)
    area = float(width * height)

    def fits(r: Region) -> bool:
        w, h = r.box[2] - r.box[0], r.box[3] - r.box[1]
        return min(w, h) >= MIN_SIDE and MIN_AREA <= (w * h) / area <= MAX_AREA

    return dedupe([r for r in found if fits(r)], 0.7, limit)


@dataclass
class QueryRegions:
    """The regions of a query picture and the picture's size (their boxes are in its pixels)."""

    width: int
    height: int
    regions: list[Region]

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "regions": [r.to_dict() for r in self.regions]}


@dataclass
class Match:
    """One image's best match over a query's regions (and, where indexed, the image's regions)."""

    id: int
    score: float
    box: list[int] | None = None  # the region of the indexed image that matched (None: the whole image)
    query_box: list[int] | None = None  # the region of the query that matched (None: the whole query)


def has_regions(store: Store, collection: str) -> bool:
    try:
        store.collection_settings(regions_of(collection))
        return True
    except UnknownCollection:
        return False


def ensure_companion(store: Store, collection: str) -> str:
    name = regions_of(collection)
    if not has_regions(store, collection):
        info = store.collection(collection)
        store.create_collection(name, info.model, info.dim, info.metric, "auto", settings={})  # plain: no DBA
    return name


def _parent(path: str) -> int | None:
    parts = path.split(":")
    return int(parts[1]) if len(parts) == 3 and parts[0] == "region" and parts[1].isdigit() else None


def sync_regions(store: Store, collection: str, embedder: Embedder, picture: Callable[[ImageRecord], Image.Image],
                 detect: Callable[[Image.Image], list[Region]] | None,
                 progress: Callable[[int, int], None] | None = None) -> tuple[int, int]:
    """Bring `collection`'s companion up to date; returns (images whose regions were computed, rows removed)."""
    if not has_regions(store, collection):
        return 0, 0
    name = regions_of(collection)
    images = {v[0]: v[3] for v in store.known_files(collection).values()}  # id -> content hash
    have: dict[int, tuple[str, list[int]]] = {}
    orphans: list[int] = []
    for path, (rid, _size, _mtime, digest) in store.known_files(name).items():
        pid = _parent(path)
        if pid is None:
            orphans.append(rid)
            continue
        entry = have.setdefault(pid, (digest, []))
        entry[1].append(rid)
        if entry[0] != digest:
            have[pid] = ("", entry[1])
    stale = orphans + [rid for pid, (digest, rows) in have.items() if images.get(pid) != digest for rid in rows]
    removed = store.remove(name, stale) if stale else 0
    todo = sorted(pid for pid, digest in images.items() if pid not in have or have[pid][0] != digest)
    done = 0
    for start in range(0, len(todo), BATCH):
        chunk = store.get(collection, todo[start:start + BATCH])
        records: list[ImageRecord] = []
        crops: list[Image.Image] = []
        marks: list[int] = []
        for rec in chunk:
            try:
                image = picture(rec)
            except (LookalikeError, OSError) as exc:
                log.warning("regions of image %s skipped: %s", rec.id, exc)
                image = None
            regions = pick_regions(image, detect, limit=INDEX_LIMIT) if image is not None else []
            if not regions:  # a marker, so the image is not looked at again until it changes
                marks.append(len(records))
                records.append(ImageRecord(path=f"region:{rec.id}:0", content_hash=rec.content_hash,
                                           metadata={"image": rec.id, "none": True}))
                continue
            for n, r in enumerate(regions):
                records.append(ImageRecord(
                    path=f"region:{rec.id}:{n}", content_hash=rec.content_hash, width=r.box[2] - r.box[0],
                    height=r.box[3] - r.box[1],
                    metadata={"image": rec.id, "box": list(r.box), "source": r.source, "label": r.label}))
                crops.append(image.crop(r.box))  # type: ignore[union-attr]
        vectors = embedder.embed_images(crops) if crops else np.zeros((0, embedder.dim), np.float32)
        full = np.zeros((len(records), embedder.dim), vectors.dtype)
        rows = [i for i in range(len(records)) if i not in set(marks)]
        if rows:
            full[rows] = vectors
        if records:
            store.upsert(name, records, full)
        done += len(chunk)
        if progress is not None:
            progress(done, len(todo))
    return len(todo), removed


def merge(store: Store, collection: str, searches: list[tuple[np.ndarray, list[int] | None]], k: int, *,
          expand: Callable[[np.ndarray], np.ndarray], flt: Filter | None = None,
          exclude_ids: set[int] | None = None, min_score: float | None = None,
          query_margin: float = QUERY_MARGIN) -> list[Match]:
    """Search each (vector, query box) in the collection and, if it has one, in its companion; best score
    per image wins.

    Whole-image scores are the collection's own (refined: DBA index, `expand` = query expansion). A region
    found in the companion scores plain cosine, which is not on that scale (DBA and expansion lift the
    scores of a query's neighbours, by about 0.1-0.2), so region scores are moved onto it by this query's
    own lift: the median, over its whole-image hits, of refined minus plain cosine. One offset for all
    images of a query: no image is favoured for being in a tight group (a per-image lift would be), and
    an ordinary query, where no region beats the whole picture, keeps the refined ranking."""
    exclude_ids = exclude_ids or set()
    best: dict[int, Match] = {}
    companion = has_regions(store, collection)
    name = regions_of(collection)
    allowed = (set(store.find_ids(collection, flt=flt)) if companion and flt is not None and not flt.is_empty()
               else None)

    def offer(m: Match) -> None:
        if m.id in exclude_ids or (min_score is not None and m.score < min_score):
            return
        if m.id not in best or m.score > best[m.id].score:
            best[m.id] = m

    depth = k + len(exclude_ids)
    for vector, qbox in searches:
        expanded = expand(vector)
        scores, ids = store.search(collection, expanded[None, :].astype(np.float32), depth, flt)
        refined = {int(i): float(s) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0}
        handicap = query_margin if qbox is not None and len(searches) > 1 else 0.0
        for i, s in refined.items():
            offer(Match(i, s - handicap, None, qbox))
        if not companion:
            continue
        rscores, rids = store.search(name, vector[None, :].astype(np.float32), max(4 * depth, 32))
        found = [(int(r), float(s)) for r, s in zip(rids[0], rscores[0], strict=True) if r >= 0]
        rows = {r.id: r for r in store.get(name, [r for r, _ in found])}
        by_image: dict[int, tuple[float, list[int] | None]] = {}
        for rid, s in found:
            r = rows.get(rid)
            if r is None or r.metadata.get("none"):
                continue
            pid = int(r.metadata.get("image", 0))
            if pid not in by_image or s > by_image[pid][0]:
                by_image[pid] = (s, list(r.metadata.get("box") or []) or None)
        pids = sorted(p for p in by_image if allowed is None or p in allowed)
        current = {r.id: r.content_hash for r in store.get(collection, pids)}
        hashes = {rows[rid].metadata.get("image"): rows[rid].content_hash for rid, _ in found if rid in rows}
        pids = [p for p in pids if p in current and hashes.get(p) == current[p]]  # image gone or changed: skip
        if not pids:
            continue
        top = list(refined)
        gaps = np.array(list(refined.values())) - store.vectors(collection, top) @ vector if top else np.zeros(1)
        lift = float(np.median(gaps))
        for p in pids:
            s, rbox = by_image[p]
            offer(Match(p, s + lift, rbox, qbox))
    return sorted(best.values(), key=lambda m: -m.score)[:k]


def region_count(store: Store, collection: str) -> int:
    return store.count(regions_of(collection)) if has_regions(store, collection) else 0


def describe(store: Store, collection: str) -> dict[str, Any]:
    """What `info` adds for a collection with regions."""
    if not has_regions(store, collection):
        return {}
    return {"regions": region_count(store, collection)}
