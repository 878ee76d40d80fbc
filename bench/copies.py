"""Copy detection on DISC21-style edited copies of the shared sets: pHash vs embedding cosine vs lookalike.

    python bench/copies.py                        # tune set + both confirmation sets, markdown table
    python bench/copies.py --sets ukbench --copies 200
    python bench/copies.py --sets flickr8k --fit  # refit verify.py's calibration on the tune set

Sets (indexed part / copies of indexed pictures / copies of pictures not indexed):
- `flickr8k` (tune: parameters and the score calibration are chosen here): 800 photos indexed, copies
  of 300 of them and of 100 of the other 200; the calibration's negatives also include the same-object
  pairs of UKBench photos 0-399 (100 objects x 4 views).
- `ukbench` (confirm): UKBench photos 400-999 indexed (150 objects x 4 views, 900 same-object pairs),
  copies of 300 of them and of 100 photos from 0-399.
- `flowers` (confirm): tf_flowers, 800 indexed, copies as for flickr8k.

Each copy gets one to three edits (crop, scale (aspect not kept), 90-degree turn, small rotation,
mirror, grey, colour, blur, noise, border, text, pasted shapes, another picture pasted over part of
it, the picture pasted onto another one) and a JPEG re-encode (quality 25-85), from a seeded RNG:
the same command gives the same copies. Metrics (DISC21's definitions): recall@1 of the original
over copies of indexed pictures; micro-AP over every (query, reference, score) prediction of all
queries, copies of non-indexed pictures included; precision and recall at each method's default
threshold; the share of same-object pairs (two different photos of one object) called duplicate.
Methods: pHash alone (64-bit DCT hash, best of 8 turns/mirrors, exhaustive; duplicate at distance
<= 10), embedding cosine alone (the default model's plain vectors, exhaustive; duplicate at the
compare threshold 0.95), lookalike (the collection's `DEPTH` nearest neighbours with cosine >=
`MIN_COSINE`, verified by `lookalike.dupes.verify`; duplicate at score >= 0.5). Also printed: the
rank of each original among the embedding neighbours (the candidate depth needed) and the cost of
verification per pair.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from lookalike import Library
from lookalike.dupes import groups as G
from lookalike.dupes import verify as V
from lookalike.dupes.candidates import REDUCE_ABOVE, REDUCED_DIM, CandidateParams, candidate_pairs

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
NEG_WEIGHT = 2.0


# -- the edit generator ----------------------------------------------------------------------------
def _colour(r: random.Random) -> tuple[int, int, int]:
    return (r.randint(0, 255), r.randint(0, 255), r.randint(0, 255))


def e_crop(im: Image.Image, r: random.Random, pool: list[Path]) -> Image.Image:
    w, h = im.size
    fw, fh = r.uniform(0.5, 0.85), r.uniform(0.5, 0.85)
    cw, ch = max(16, int(w * fw)), max(16, int(h * fh))
    x, y = r.randint(0, w - cw), r.randint(0, h - ch)
    return im.crop((x, y, x + cw, y + ch))


def e_scale(im: Image.Image, r: random.Random, pool: list[Path]) -> Image.Image:
    return im.resize((max(32, int(im.width * r.uniform(0.3, 0.7))), max(32, int(im.height * r.uniform(0.3, 0.7)))),
                     Image.Resampling.BILINEAR)


def e_rot90(im: Image.Image, r: random.Random, pool: list[Path]) -> Image.Image:
    return im.rotate(r.choice([90, 180, 270]), expand=True)


def e_tilt(im: Image.Image, r: random.Random, pool: list[Path]) -> Image.Image:
    return im.rotate(r.uniform(3, 15) * r.choice([-1, 1]), resample=Image.Resampling.BICUBIC,
                     expand=r.random() < 0.5, fillcolor=_colour(r))


def e_flip(im: Image.Image, r: random.Random, pool: list[Path]) -> Image.Image:
    return ImageOps.mirror(im)


def e_grey(im: Image.Image, r: random.Random, pool: list[Path]) -> Image.Image:
    return ImageOps.grayscale(im).convert("RGB")


def e_colour(im: Image.Image, r: random.Random, pool: list[Path]) -> Image.Image:
    im = ImageEnhance.Brightness(im).enhance(r.uniform(0.6, 1.4))
    im = ImageEnhance.Contrast(im).enhance(r.uniform(0.6, 1.4))
    return ImageEnhance.Color(im).enhance(r.uniform(0.2, 1.8))


def e_blur(im: Image.Image, r: random.Random, pool: list[Path]) -> Image.Image:
    return im.filter(ImageFilter.GaussianBlur(r.uniform(0.8, 2.5)))


def e_noise(im: Image.Image, r: random.Random, pool: list[Path]) -> Image.Image:
    a = np.asarray(im, np.float32)
    a = a + np.random.default_rng(r.randint(0, 2**31)).normal(0, r.uniform(5, 15), a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def e_border(im: Image.Image, r: random.Random, pool: list[Path]) -> Image.Image:
    return ImageOps.expand(im, border=max(2, int(min(im.size) * r.uniform(0.05, 0.2))), fill=_colour(r))


def e_text(im: Image.Image, r: random.Random, pool: list[Path]) -> Image.Image:
    im = im.copy()
    d = ImageDraw.Draw(im)
    for _ in range(r.randint(1, 4)):
        d.text((r.randint(0, max(1, im.width // 2)), r.randint(0, max(1, im.height - 12))),
               r.choice(["COPY", "lol", "#meme", "(c) 2024", "SALE"]) + f" {r.randint(0, 9999)}", fill=_colour(r),
               font_size=r.randint(10, 24))
    return im


def e_shapes(im: Image.Image, r: random.Random, pool: list[Path]) -> Image.Image:
    im = im.copy()
    d = ImageDraw.Draw(im)
    for _ in range(r.randint(1, 3)):
        s = int(min(im.size) * r.uniform(0.08, 0.2))
        x, y = r.randint(0, max(1, im.width - s)), r.randint(0, max(1, im.height - s))
        (d.ellipse if r.random() < 0.5 else d.rectangle)((x, y, x + s, y + s), fill=_colour(r))
    return im


def e_overlay(im: Image.Image, r: random.Random, pool: list[Path]) -> Image.Image:
    """Another picture pasted over 10-25% of this one."""
    other = Image.open(r.choice(pool)).convert("RGB")
    f = math.sqrt(r.uniform(0.1, 0.25))
    other = other.resize((max(8, int(im.width * f)), max(8, int(im.height * f))))
    im = im.copy()
    im.paste(other, (r.randint(0, im.width - other.width), r.randint(0, im.height - other.height)))
    return im


def e_onto(im: Image.Image, r: random.Random, pool: list[Path]) -> Image.Image:
    """This picture, shrunk to 60-85%, pasted onto another one."""
    bg = Image.open(r.choice(pool)).convert("RGB").resize(im.size)
    f = r.uniform(0.6, 0.85)
    small = im.resize((max(16, int(im.width * f)), max(16, int(im.height * f))))
    bg.paste(small, (r.randint(0, im.width - small.width), r.randint(0, im.height - small.height)))
    return bg


EDITS = {f.__name__[2:]: f for f in (e_crop, e_scale, e_rot90, e_tilt, e_flip, e_grey, e_colour, e_blur, e_noise,
                                     e_border, e_text, e_shapes, e_overlay, e_onto)}


def make_copies(sources: list[Path], out: Path, seed: int, pool: list[Path], prefix: str) -> dict[str, dict]:
    """Write one edited copy of each source to `out`; returns {copy name: {"original", "edits"}}."""
    out.mkdir(parents=True, exist_ok=True)
    r, truth = random.Random(seed), {}
    for i, src in enumerate(sources):
        im = Image.open(src).convert("RGB")
        names = r.sample(sorted(EDITS), r.choice([1, 1, 2, 2, 3]))
        for n in names:
            im = EDITS[n](im, r, pool)
        q = r.randint(25, 85)
        name = f"{prefix}{i:04d}.jpg"
        im.save(out / name, quality=q)
        truth[name] = {"original": str(src), "edits": [*names, f"jpeg{q}"]}
    return truth


# -- the sets --------------------------------------------------------------------------------------
def ukbench_files() -> list[Path]:
    return sorted((DATASETS / "ukbench_first1000").glob("ukbench*.jpg"))


def set_files(name: str) -> tuple[list[Path], list[Path], list[tuple[Path, Path]]]:
    """(indexed, not indexed, same-object pairs among the indexed)."""
    if name == "ukbench":
        files = ukbench_files()
        indexed, other = files[400:], files[:400]
        pairs = [(indexed[4 * g + i], indexed[4 * g + j]) for g in range(len(indexed) // 4)
                 for i in range(4) for j in range(i + 1, 4)]
        return indexed, other, pairs
    if name == "flickr8k":
        files = sorted((DATASETS / "flickr8k_1000" / "images").glob("*.jpg"))
    elif name == "flowers":
        files = sorted((DATASETS / "tf_flowers_1000").rglob("*.jpg"))
    else:
        raise SystemExit(f"unknown set {name}")
    random.Random(1).shuffle(files)
    return files[:800], files[800:], []


def tune_negative_pairs() -> list[tuple[Path, Path]]:
    files = ukbench_files()[:400]
    return [(files[4 * g + i], files[4 * g + j]) for g in range(100) for i in range(4) for j in range(i + 1, 4)]


# -- metrics ---------------------------------------------------------------------------------------
def micro_ap(preds: list[tuple[float, bool]], positives: int) -> float:
    """DISC21 micro-AP: predictions of all queries pooled, sorted by score; AP over `positives`."""
    preds = sorted(preds, key=lambda t: -t[0])
    hits, ap = 0, 0.0
    for i, (_, ok) in enumerate(preds, 1):
        if ok:
            hits += 1
            ap += hits / i
    return ap / positives if positives else 0.0


def summarise(name: str, preds: dict[str, list[tuple[int, float]]], truth: dict[str, int | None],
              threshold: float, same_object: float | None) -> dict:
    positives = sum(v is not None for v in truth.values())
    pooled, r1, tp, fp = [], 0, 0, 0
    for q, plist in preds.items():
        orig = truth[q]
        plist = sorted(plist, key=lambda t: -t[1])
        if plist and orig is not None and plist[0][0] == orig:
            r1 += 1
        for ref, s in plist:
            ok = ref == orig
            pooled.append((s, ok))
            if s >= threshold:
                tp += ok
                fp += not ok
    return {"method": name, "recall@1": r1 / positives, "micro-AP": micro_ap(pooled, positives),
            "precision": tp / (tp + fp) if tp + fp else 1.0, "recall": tp / positives,
            "same-object called duplicate": same_object}


def fit_calibration(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Logistic regression with signs fixed by meaning (more tight inliers / correlation / overlap:
    likelier a copy; larger pHash distance / residual / perspective gain: less likely), L2-regularised;
    the negatives weigh `NEG_WEIGHT` times as much (a false "duplicate" costs more than a miss)."""
    from scipy.optimize import minimize

    signs = np.array([1, 1, 1, 1, -1, -1, -1], float)

    w = np.where(y > 0, 1.0, NEG_WEIGHT)

    def loss(t: np.ndarray) -> float:
        z = X @ t[:-1] + t[-1]
        return float((w * (np.logaddexp(0, z) - y * z)).sum() + 0.1 * (t[:-1] ** 2).sum())

    bounds = [(0, None) if s > 0 else (None, 0) for s in signs] + [(None, None)]
    res = minimize(loss, np.zeros(X.shape[1] + 1), method="L-BFGS-B", bounds=bounds)
    return res.x[:-1], float(res.x[-1])


# -- one set ---------------------------------------------------------------------------------------
def run_set(name: str, work: Path, n_copies: int, n_unindexed: int, seed: int, fit: bool, depth: int,
            reduce_above: int = REDUCE_ABOVE) -> dict:
    indexed, other, same_pairs = set_files(name)
    r = random.Random(seed)
    picked = r.sample(indexed, min(n_copies, len(indexed)))
    outside = r.sample(other, min(n_unindexed, len(other)))
    folder = work / name
    if folder.exists():
        shutil.rmtree(folder / "copies", ignore_errors=True)
    pool = other[:50]
    truth_in = make_copies(picked, folder / "copies", seed, pool, "in")
    truth_out = make_copies(outside, folder / "copies", seed + 1, pool, "out")
    home = folder / "home"
    lib = Library(home, model_dir=work / "models")
    col = f"{name}-bench"
    t0 = time.perf_counter()
    if col not in {c.name for c in lib.collections()} or lib.count(col) != len(indexed):
        lib.index([str(p) for p in indexed], collection=col)
    index_s = time.perf_counter() - t0
    store = lib.store
    ids, vecs = store.all_vectors(col)
    id_of = {rec.path: rec.id for rec in store.get(col, [int(i) for i in ids])}
    path_of = {v: k for k, v in id_of.items()}
    embedder = lib.collection_embedder(col)
    queries = sorted(truth_in) + sorted(truth_out)
    qimgs = [Image.open(folder / "copies" / q).convert("RGB") for q in queries]

    def embed(images: list[Image.Image]) -> np.ndarray:  # in batches: one huge batch holds GBs of activations
        return np.concatenate([embedder.embed_images(images[s:s + 64]) for s in range(0, len(images), 64)])

    cached = folder / f"vectors-{embedder.name.replace('/', '_')}-{seed}-{len(queries)}.npz"
    if cached.exists():  # the copies are the same for the same seed: embed them once
        z = np.load(cached)
        qvecs, q_turned, ref_turned, q_half, ref_half = (z[k] for k in ("q", "q90", "r90", "q180", "r180"))
    else:
        qvecs = embed(qimgs)
    truth = {q: id_of[os.path.abspath(truth_in[q]["original"])] if q in truth_in else None for q in queries}
    # pHash of every indexed picture (8 turns/mirrors) and of the queries (as they are)
    ref_feats: dict[int, V.Features] = {}

    def feats(i: int) -> V.Features:
        if i not in ref_feats:
            ref_feats[i] = V.extract(Image.open(path_of[i]).convert("RGB"))
        return ref_feats[i]

    id_list = [int(i) for i in ids]
    ref_ph = np.stack([feats(i).phashes for i in id_list])  # (n, 8, 64)
    sims = qvecs @ vecs.T
    # the candidate stage of `lookalike dupes` also searches with every picture turned by 90 degrees
    # (dupes/cache.py): the copy's view against the originals, and each original's view against the copy
    turn = Image.Transpose.ROTATE_90
    if not cached.exists():
        def refs_turned(t: Image.Transpose) -> np.ndarray:
            return np.concatenate([embedder.embed_images([Image.open(path_of[i]).convert("RGB").transpose(t)
                                                          for i in id_list[s:s + 64]])
                                   for s in range(0, len(id_list), 64)])

        q_turned = embed([im.transpose(turn) for im in qimgs])
        ref_turned = refs_turned(turn)
        q_half = embed([im.transpose(Image.Transpose.ROTATE_180) for im in qimgs])
        ref_half = refs_turned(Image.Transpose.ROTATE_180)
        np.savez(cached, q=qvecs, q90=q_turned, r90=ref_turned, q180=q_half, r180=ref_half)
    sims_view = np.maximum(q_turned @ vecs.T, qvecs @ ref_turned.T)
    # the candidates `lookalike dupes` would verify in a collection holding the indexed pictures and the
    # copies (dupes/candidates.py: each picture's and each view's nearest neighbours), with the product's
    # candidate index for this size, and with the PCA-reduced one it uses at scale (--reduce-above 0)
    copy_ids = [max(id_list) + 1 + qi for qi in range(len(queries))]
    all_ids = id_list + copy_ids
    plain_of = dict(zip(all_ids, np.concatenate([vecs, qvecs]), strict=True))
    view_of = dict(zip(all_ids, np.concatenate([ref_turned, q_turned]), strict=True))
    query_of = dict(zip(copy_ids, queries, strict=True))
    ref_ids = set(id_list)

    half_of = dict(zip(all_ids, np.concatenate([ref_half, q_half]), strict=True))

    def candidates_for(reduce_above: int, depth: int = depth, half: bool = True) -> dict[str, dict[int, float]]:
        """(`dupes` searches with the 90- and the 180-degree views: half=True)"""
        params = CandidateParams(depth, G.MIN_COSINE, G.NEAR_RANKS, G.NEAR_MIN_COSINE, reduce_above=reduce_above)
        out: dict[str, dict[int, float]] = {q: {} for q in queries}
        tables = (view_of, half_of) if half else (view_of,)
        found = candidate_pairs(all_ids, lambda b: np.stack([plain_of[i] for i in b]), params,
                                views_of=lambda b: np.stack([np.stack([t[i] for t in tables]) for i in b]))
        for a, b, cos in zip(found.a.tolist(), found.b.tolist(), found.cosine.tolist(), strict=True):
            if a in ref_ids and b in query_of:  # copy ids are above every indexed id
                out[query_of[b]][a] = cos
        return out

    def label(r: int) -> str:
        return f"PCA-{REDUCED_DIM}" if len(all_ids) >= r else "full vectors"

    cand_sets: dict[str, dict[str, dict[int, float]]] = {}
    for r in (reduce_above, 0):
        if label(r) not in cand_sets:
            cand_sets[label(r)] = candidates_for(r)
    cand_recall = {k: float(np.mean([truth[q] in c[q] for q in truth_in])) for k, c in cand_sets.items()}
    cand_pairs = {k: int(sum(len(v) for v in c.values())) for k, c in cand_sets.items()}
    chosen = cand_sets[label(reduce_above)]
    # DISC21's protocol for comparison: each copy a query against the indexed pictures only (as
    # `search --copies` does), so copies never crowd each other out of the neighbours
    sims_turned = np.maximum(sims_view, np.maximum(q_half @ vecs.T, qvecs @ ref_half.T))
    disc = []
    for qi, q in enumerate(queries[:len(truth_in)]):
        best = np.maximum(sims[qi], sims_turned[qi])
        pool = set(np.argsort(-sims[qi])[:depth].tolist()) | set(np.argsort(-sims_turned[qi])[:depth].tolist())
        j = id_list.index(truth[q])
        disc.append(j in pool and best[j] >= G.MIN_COSINE)
    cand_recall["queries against the indexed pictures only (DISC21)"] = float(np.mean(disc))
    # what other depths (and a 180-degree view besides the 90-degree one) would keep, without verifying
    sweep = {}
    for d in (10, 20, 30, 50, 80):
        for half in (False, True):
            c = candidates_for(reduce_above, d, half)
            sweep[f"depth {d}, {'90 + 180' if half else '90'}-degree views"] = {
                "recall": float(np.mean([truth[q] in c[q] for q in truth_in])),
                "pairs per query": float(np.mean([len(v) for v in c.values()]))}
    preds_ph, preds_emb, preds_ll = {}, {}, {}
    ranks, verify_s, verified, X, y, deep, extra_X = [], 0.0, 0, [], [], [], []
    view_ranks: list[int] = []
    names: list[str] = []
    extra_names: list[str] = []
    true_cos: list[float] = []
    t_extract = time.perf_counter()
    for i in id_list:
        feats(i)
    extract_ms = 1000 * (time.perf_counter() - t_extract) / max(1, len(id_list))
    for qi, q in enumerate(queries):
        qf = V.extract(qimgs[qi])
        d = (ref_ph != qf.phashes[0][None, None, :]).sum(axis=2).min(axis=1)
        top = np.argsort(d)[:10]
        preds_ph[q] = [(id_list[j], 1 - d[j] / 64) for j in top]
        order = np.argsort(-sims[qi])
        preds_emb[q] = [(id_list[j], float(sims[qi, j])) for j in order[:10]]
        if truth[q] is not None:
            ranks.append(int(np.nonzero(np.array(id_list)[order] == truth[q])[0][0]) + 1)
        cands = sorted(chosen[q].items(), key=lambda t: -t[1])
        if truth[q] is not None:
            j = id_list.index(truth[q])
            view_ranks.append(min(ranks[-1], int((sims_view[qi] > sims_view[qi, j]).sum()) + 1))
            true_cos.append(float(max(sims[qi, j], sims_view[qi, j])))
        if truth[q] is not None and truth[q] not in {c for c, _ in cands}:
            deep.append((q, view_ranks[-1], round(true_cos[-1], 3), truth_in[q]["edits"]))
            if fit:  # the calibration also learns from copies the candidates missed (not scored as found)
                j = id_list.index(truth[q])
                c = V.compare_features(qf, feats(truth[q]), cosine=float(sims[qi, j]))
                extra_X.append(V.evidence_vector(c))
                extra_names.append(f"{q} {'+'.join(truth_in[q]['edits'])} (not a candidate)")
        out = []
        for ref, cos in cands:
            feats(ref)
            t1 = time.perf_counter()
            c = V.compare_features(qf, feats(ref), cosine=cos)
            verify_s += time.perf_counter() - t1
            verified += 1
            out.append((ref, c.score))
            X.append(V.evidence_vector(c))
            y.append(float(ref == truth[q]))
            names.append(f"{q} {'+'.join(truth_in[q]['edits']) if q in truth_in else 'unindexed'} ref={ref}")
        preds_ll[q] = out
    neg_pairs = tune_negative_pairs() if fit else same_pairs
    neg_c, neg_feats = [], {}
    for a, b in neg_pairs:
        for x in (a, b):
            if x not in neg_feats:
                neg_feats[x] = V.extract(Image.open(x).convert("RGB"))
        c = V.compare_features(neg_feats[a], neg_feats[b])
        neg_c.append(c)
        if fit:
            X.append(V.evidence_vector(c))
            y.append(0.0)
    neg_names = [f"{a.name} ~ {b.name}" for a, b in neg_pairs]
    np.savez(folder / "evidence.npz", X=np.array(X), y=np.array(y), extra=np.array(extra_X).reshape(-1, 7),
             names=np.array(names + (neg_names if fit else [])), extra_names=np.array(extra_names),
             neg_names=np.array(neg_names),
             neg=np.array([V.evidence_vector(c) for c in neg_c]).reshape(-1, 7))
    result: dict = {"set": name, "indexed": len(indexed), "queries": len(queries), "copies of indexed": len(truth_in),
                    "index_s": index_s, "verified_pairs": verified, "candidate_recall": cand_recall,
                    "candidate_pairs_per_config": cand_pairs, "candidate_sweep": sweep,
                    "verified_config": label(reduce_above),
                    "verify_ms_per_pair": 1000 * verify_s / max(1, verified), "extract_ms_per_image": extract_ms,
                    "originals_deeper_than_depth": deep,
                    "rank_of_original": {"p50": float(np.percentile(ranks, 50)), "p95": float(np.percentile(ranks, 95)),
                                         "max": int(max(ranks)),
                                         **{f"<= {k}": float(np.mean(np.array(ranks) <= k)) for k in (1, 10, 20, 50)}},
                    "rank_with_turned_views": {"max": int(max(view_ranks)), **{
                        f"<= {k}": float(np.mean(np.array(view_ranks) <= k)) for k in (1, 10, 20, 50)}},
                    "cosine_of_copy_pairs": {"min": min(true_cos), "p1": float(np.percentile(true_cos, 1)),
                                             "p5": float(np.percentile(true_cos, 5))}}
    if fit:
        fx = np.concatenate([np.array(X), np.array(extra_X).reshape(-1, 7)])
        coef, intercept = fit_calibration(fx, np.concatenate([np.array(y), np.ones(len(extra_X))]))
        result["fit"] = {"COEF": [round(float(c), 3) for c in coef], "INTERCEPT": round(intercept, 3)}
        V.COEF, V.INTERCEPT = np.array(result["fit"]["COEF"]), result["fit"]["INTERCEPT"]
        xs = np.array(X)
        scores = 1 / (1 + np.exp(-(xs @ V.COEF + V.INTERCEPT)))
        k = 0  # re-score the predictions with the new calibration, in the order they were made
        for q in queries:
            preds_ll[q] = [(ref, float(scores[k + i])) for i, (ref, _) in enumerate(preds_ll[q])]
            k += len(preds_ll[q])
        neg_scores = scores[k:]
        same_ll = float(np.mean(neg_scores >= V.DUPLICATE_AT))
    else:
        same_ll = float(np.mean([c.is_copy for c in neg_c])) if neg_c else None
    same_ph = same_emb = None
    if same_pairs and not fit:
        pv = {p: store.vectors(col, [id_of[os.path.abspath(p)]])[0] for p in {x for pr in same_pairs for x in pr}}
        same_emb = float(np.mean([float(pv[a] @ pv[b]) >= 0.95 for a, b in same_pairs]))
        same_ph = float(np.mean([c.phash_distance <= 10 for c in neg_c]))
    result["methods"] = [summarise("pHash alone", preds_ph, truth, 1 - 10 / 64, same_ph),
                         summarise("embedding cosine alone", preds_emb, truth, 0.95, same_emb),
                         summarise("lookalike (candidates + verification)", preds_ll, truth, V.DUPLICATE_AT, same_ll)]
    per_edit: dict[str, list[int]] = {}  # edit -> [copies, lookalike top-1 right, original a candidate]
    for q in truth_in:
        top = max(preds_ll[q], key=lambda t: t[1]) if preds_ll[q] else (None, 0.0)
        for e in truth_in[q]["edits"][:-1]:
            row = per_edit.setdefault(e, [0, 0, 0])
            row[0] += 1
            row[1] += top[0] == truth[q]
            row[2] += truth[q] in chosen[q]
    result["per_edit"] = {e: {"copies": c, "recall@1": r / c, "candidate_recall": k / c}
                          for e, (c, r, k) in sorted(per_edit.items())}
    misses = [(q, truth_in[q]["edits"]) for q in truth_in
              if not preds_ll[q] or max(preds_ll[q], key=lambda t: t[1])[0] != truth[q]
              or max(s for _, s in preds_ll[q]) < V.DUPLICATE_AT]
    result["lookalike_misses"] = misses[:20]
    fps = [(q, s) for q in truth_out for _, s in preds_ll[q] if s >= V.DUPLICATE_AT]
    result["unindexed_copies_called_duplicate"] = len(fps)
    lib.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="flickr8k,ukbench,flowers")
    ap.add_argument("--work", default="/tmp/lookalike-bench-copies")
    ap.add_argument("--copies", type=int, default=300)
    ap.add_argument("--unindexed", type=int, default=100)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--depth", type=int, default=G.DEPTH)
    ap.add_argument("--reduce-above", type=int, default=REDUCE_ABOVE,
                    help="verify the candidates of the PCA-reduced index from this many pictures on (0: always)")
    ap.add_argument("--fit", action="store_true", help="refit the score calibration on the (first) set")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    results = []
    for name in args.sets.split(","):
        res = run_set(name, Path(args.work), args.copies, args.unindexed, args.seed, args.fit, args.depth,
                      args.reduce_above)
        results.append(res)
        print(f"\n### {name}: {res['indexed']} indexed, {res['queries']} queries "
              f"({res['copies of indexed']} copies of indexed pictures)\n")
        print("| method | recall@1 | micro-AP | precision @ default | recall @ default "
              "| same-object pairs called duplicate |")
        print("|---|---|---|---|---|---|")
        for m in res["methods"]:
            so = "-" if m["same-object called duplicate"] is None else f"{m['same-object called duplicate']:.2%}"
            print(f"| {m['method']} | {m['recall@1']:.3f} | {m['micro-AP']:.3f} | {m['precision']:.3f} | "
                  f"{m['recall']:.3f} | {so} |")
        print(f"\nrank of the original among embedding neighbours: {json.dumps(res['rank_of_original'])}")
        print(f"... with the 90-degree views: {json.dumps(res['rank_with_turned_views'])}; best cosine of the "
              f"copy pairs: {json.dumps(res['cosine_of_copy_pairs'])}")
        print("originals among the candidates (copies of indexed pictures): "
              + ", ".join(f"{k} {v:.3f}" for k, v in res["candidate_recall"].items()) + " (the first one is verified)")
        print(f"verification: {res['verified_pairs']} pairs, {res['verify_ms_per_pair']:.1f} ms/pair, plus "
              f"{res['extract_ms_per_image']:.1f} ms/picture for its features (cached); "
              "copies of non-indexed pictures called duplicate: "
              f"{res['unindexed_copies_called_duplicate']}")
        print("candidates by depth: " + "; ".join(f"{k}: recall {v['recall']:.3f}, {v['pairs per query']:.1f} "
                                                  "pairs/query" for k, v in res["candidate_sweep"].items()))
        print("\n| edit (copies with it) | lookalike recall@1 | original among the candidates |\n|---|---|---|")
        for e, v in res["per_edit"].items():
            print(f"| {e} ({v['copies']}) | {v['recall@1']:.3f} | {v['candidate_recall']:.3f} |")
        if res.get("fit"):
            print(f"fitted calibration: COEF = {res['fit']['COEF']}, INTERCEPT = {res['fit']['INTERCEPT']}")
        if res["originals_deeper_than_depth"]:
            print("originals deeper than the candidate depth:", res["originals_deeper_than_depth"])
        if res["lookalike_misses"]:
            print("lookalike misses (first 20):", res["lookalike_misses"])
        sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
