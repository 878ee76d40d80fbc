"""Is picture B a copy of picture A? Local features + a geometric check + a pixel check, one score.

Copies (crops, scales with or without the aspect ratio, re-encodes, 90-degree turns, mirror images,
small tilts, colour changes, borders, text or pictures on top) are related to their original by an
*affine* transform (mirrored or not) and, once aligned, agree pixel for pixel. Two different photos of
one object or scene share local features too (a CD cover, a facade) but need a perspective change to
line up and differ in lighting, background and parallax, so they fail one of the checks. For a pair:

1. SIFT keypoints (RootSIFT descriptors) on a grey copy whose longer side is at most `WORK_SIDE`
   pixels (small pictures are enlarged for detection only, so they yield keypoints), and lazily on
   its mirror image;
2. Lowe's ratio test, then an affine fit with RANSAC of the larger picture onto the smaller one; the
   mirror image is tried when the direct fit has fewer than `CONVINCING` tight inliers. SIFT is
   rotation-invariant, so 90-degree turns and tilts need no extra pass. Measured on the inliers:
   how many sit within a tight tolerance, their median residual, and how much better a homography
   fits them than the affine transform (`perspective_gain`: ~1.0 for copies, > 1.2 for most other
   photos of a flat object);
3. the larger picture warped onto the smaller: median over a grid of cells of the normalised
   cross-correlation of the blurred grey pixels (`ncc`; robust to text or logos on part of a copy),
   and the share of textured pixels the two cover of each other (`overlap`);
4. a logistic calibration of these (and the pHash distance over the 8 turns/mirrors) gives the
   score, P(copy), fitted by `bench/copies.py --fit` on one generated set (flickr8k copies + the
   same-object pairs of UKBench photos 0-399) and confirmed on others (docs/benchmarks.md).

Identical bytes are copies without any of this (`identical`, check "content-hash"); a pHash distance
of at most `PHASH_NEAR` bits also decides "copy" (tiny or very blurred copies with few keypoints).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

WORK_SIDE = 320  # longer side of the grey working copy features and pixels are compared at
MAX_FEATURES = 800
RATIO = 0.8  # Lowe's ratio test
LOOSE = 0.0125  # RANSAC reprojection threshold, share of the smaller picture's longer side
TIGHT = 0.004  # "tight" inliers: residual under this share (at least 1 px)
MAX_ANISOTROPY = 3.0  # affine fits stretching one axis more than this against the other are refused
CONVINCING = 25  # tight inliers of the direct fit above which the mirror image is not tried
MIN_MATCHES = 4  # fewer good matches: no geometric fit is attempted
NCC_BLUR = 1.5
CELLS = 6  # grid of the pixel check

# Logistic calibration of P(copy | evidence), fitted by `bench/copies.py --fit` (see the module
# docstring). Inputs: `evidence_vector`.
COEF = np.array([0.0, 0.0, 2.008, 0.948, -2.948, -3.159, -6.129], dtype=np.float64)
INTERCEPT = -4.104
DUPLICATE_AT = 0.5  # score at or above: "duplicate" (calibrated: P(copy) >= 0.5)
SIMILAR_COSINE = 0.70  # not a copy, but embedding cosine at or above: "similar"
PHASH_NEAR = 6  # pHash distance (of 64 bits, best of 8 turns/mirrors) that alone decides "copy"


@dataclass
class Features:
    """What the verifier needs of one picture; cheap to keep in a cache (`extract` once per image)."""

    grey: np.ndarray  # uint8 grey picture, downscaled to longer side <= WORK_SIDE (never enlarged)
    keypoints: np.ndarray  # (n, 2) float32 positions in `grey` (detected on an enlarged copy if small)
    descriptors: np.ndarray  # (n, 128) float16 RootSIFT
    phashes: np.ndarray  # (8, 64) bool: pHash of the 8 turns/mirrors (index 0: as is)
    mirror: tuple[np.ndarray, np.ndarray] | None = None  # keypoints, descriptors of the mirror image
    size: tuple[int, int] = (0, 0)  # original (width, height)
    mirror_axis: float = 0.0  # x -> mirror_axis - x maps keypoints to the mirror image
    _textured: np.ndarray | None = field(default=None, repr=False)

    def mirrored(self) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints and descriptors of the mirror image, without detecting again: a SIFT descriptor
        of the mirrored picture is the original one with its 4 rows of cells in reverse order and its
        orientation bins k -> -k (checked: 96% of the keypoints detected on the flipped picture match)."""
        if self.mirror is None:
            kp = self.keypoints.copy()
            kp[:, 0] = self.mirror_axis - kp[:, 0]
            desc = self.descriptors.reshape(-1, 4, 4, 8)[:, ::-1][:, :, :, _MIRROR_BINS].reshape(-1, 128)
            self.mirror = (kp, np.ascontiguousarray(desc))
        return self.mirror

    def textured(self) -> np.ndarray:
        """Pixels with some local contrast (bool, like `grey`), dilated a little."""
        if self._textured is None:
            g = cv2.GaussianBlur(self.grey, (0, 0), 1.0).astype(np.float32)
            mag = np.abs(cv2.Sobel(g, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(g, cv2.CV_32F, 0, 1))
            self._textured = cv2.dilate((mag > 8).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
            if self._textured.sum() < 0.05 * self._textured.size:  # a flat picture: all of it
                self._textured[:] = True
        return self._textured

    @property
    def area(self) -> int:
        return int(self.grey.shape[0] * self.grey.shape[1])


@dataclass
class Comparison:
    """The verdict on one pair. `score` is the calibrated probability that one is a copy of the other."""

    score: float
    verdict: str  # "duplicate" | "similar" | "different"
    check: str  # what decided: "content-hash", "geometry", "phash", "none"
    inliers: int = 0
    tight: int = 0
    matches: int = 0
    inlier_ratio: float = 0.0
    residual: float = 1.0
    perspective_gain: float = 1.0
    ncc: float = 0.0
    overlap: float = 0.0
    mirrored: bool = False
    rotation: float = 0.0  # degrees, B -> A
    scale: float = 1.0  # B -> A, at the original sizes
    phash_distance: int = 64
    cosine: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def is_copy(self) -> bool:
        return self.verdict == "duplicate"

    def to_dict(self) -> dict[str, Any]:
        d = {"score": round(self.score, 4), "verdict": self.verdict, "check": self.check,
             "inliers": self.inliers, "tight_inliers": self.tight, "matches": self.matches,
             "inlier_ratio": round(self.inlier_ratio, 3),
             "residual": round(self.residual, 3), "perspective_gain": round(self.perspective_gain, 3),
             "ncc": round(self.ncc, 3), "overlap": round(self.overlap, 3), "mirrored": self.mirrored,
             "rotation": round(self.rotation, 1), "scale": round(self.scale, 3),
             "phash_distance": self.phash_distance}
        if self.cosine is not None:
            d["cosine"] = round(self.cosine, 4)
        return d


_sift_detector: Any = None


def _detector() -> Any:
    global _sift_detector
    if _sift_detector is None:
        _sift_detector = cv2.SIFT_create(nfeatures=MAX_FEATURES)
    return _sift_detector


def _sift(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    kps, desc = _detector().detectAndCompute(grey, None)
    if desc is None or not kps:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float16)
    desc = desc / (np.abs(desc).sum(axis=1, keepdims=True) + 1e-7)  # RootSIFT: L1, then sqrt
    return np.array([k.pt for k in kps], np.float32), np.sqrt(desc).astype(np.float16)  # half the memory


def _phashes(grey: np.ndarray) -> np.ndarray:
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    out = []
    for m in (small, small[:, ::-1]):
        for k in range(4):
            dct = cv2.dct(np.ascontiguousarray(np.rot90(m, k)))[:8, :8].reshape(-1)
            out.append(dct > np.median(dct[1:]))
    return np.array(out, bool)


def to_grey(image: Image.Image | np.ndarray) -> np.ndarray:
    """A uint8 grey array of an RGB/L PIL image or an array (H, W[, 3] RGB)."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("L"))
    elif image.ndim == 3:
        image = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(image, dtype=np.uint8)


def _sift_at_work_size(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """SIFT on `grey` enlarged to WORK_SIDE when smaller (small copies yield too few keypoints
    otherwise); positions are given in `grey`'s own pixels. Also returns x -> axis - x, the mirror
    map in those pixels."""
    h, w = grey.shape
    f = WORK_SIDE / max(h, w, 1)
    if f <= 1.05:
        kp, desc = _sift(grey)
        return kp, desc, float(w - 1)
    wb = max(8, round(w * f))
    big = cv2.resize(grey, (wb, max(8, round(h * f))), interpolation=cv2.INTER_CUBIC)
    kp, desc = _sift(big)
    return kp / np.float32(f), desc, (wb - 1) / f


def extract(image: Image.Image | np.ndarray) -> Features:
    """Features of one picture (about 10 ms on one core)."""
    grey = to_grey(image)
    h, w = grey.shape
    f = WORK_SIDE / max(h, w, 1)
    if f < 1:
        grey = cv2.resize(grey, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)
    kp, desc, axis = _sift_at_work_size(grey)
    return Features(grey=grey, keypoints=kp, descriptors=desc, phashes=_phashes(grey), size=(w, h),
                    mirror_axis=axis)


_matcher = cv2.BFMatcher(cv2.NORM_L2)
_MIRROR_BINS = [(8 - k) % 8 for k in range(8)]


def _good_matches(da: np.ndarray, db: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index in a, index in b) of ratio-test matches of b's descriptors against a's."""
    if len(da) < 2 or len(db) < 1:
        return np.zeros(0, int), np.zeros(0, int)
    pairs = _matcher.knnMatch(db.astype(np.float32), da.astype(np.float32), k=2)
    ia, ib = [], []
    for p in pairs:
        if len(p) == 2 and p[0].distance < RATIO * p[1].distance:
            ia.append(p[0].trainIdx)
            ib.append(p[0].queryIdx)
    return np.array(ia, int), np.array(ib, int)


@dataclass
class _Fit:
    inliers: int = 0  # distinct keypoints within the loose tolerance
    tight: int = 0  # of those, within the tight tolerance (copies: nearly all; other photos: fewer)
    matches: int = 0
    matrix: np.ndarray | None = None  # 2x3 affine, big's pixels -> small's pixels
    mirrored: bool = False
    residual: float = 1.0  # median residual of the inliers, in units of the tight tolerance
    perspective_gain: float = 1.0  # affine residual / homography residual on the inliers


def _fit(big: Features, small: Features, kb: np.ndarray, db: np.ndarray, mirrored: bool) -> _Fit:
    """Affine fit of `big`'s keypoints (kb, db: possibly of its mirror image) onto `small`'s."""
    ib, is_ = _good_matches(db, small.descriptors)  # indices into (kb, db) and small's keypoints
    if len(ib) < MIN_MATCHES:
        return _Fit(matches=len(ib), mirrored=mirrored)
    side = max(small.grey.shape)
    tol = max(1.0, TIGHT * side)
    src, dst = kb[ib], small.keypoints[is_]
    m, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=LOOSE * side,
                                   maxIters=2000, confidence=0.995)
    if m is None or mask is None:
        return _Fit(matches=len(ib), mirrored=mirrored)
    sv = np.linalg.svd(m[:, :2], compute_uv=False)
    if sv[1] <= 1e-6 or sv[0] / sv[1] > MAX_ANISOTROPY:
        return _Fit(matches=len(ib), mirrored=mirrored)
    inl = mask.ravel().astype(bool)
    err = np.linalg.norm(src @ m[:, :2].T + m[:, 2] - dst, axis=1)
    # one keypoint position matched several times (repeated texture, octaves) counts once
    def distinct(sel: np.ndarray) -> int:
        return len(np.unique(np.round(dst[sel]).astype(int), axis=0)) if sel.any() else 0
    # a perspective change (another photo of a flat thing) fits a homography better than the affine
    # transform; a copy does not: median residual of the affine fit / of a homography fitted to its inliers
    gain = 1.0
    if inl.sum() >= 12:
        h, _ = cv2.findHomography(src[inl], dst[inl], 0)
        if h is not None and abs(h[2, 2]) > 1e-9:
            proj = cv2.perspectiveTransform(src[inl].reshape(-1, 1, 2).astype(np.float64), h).reshape(-1, 2)
            herr = float(np.median(np.linalg.norm(proj - dst[inl], axis=1)))
            gain = float(np.median(err[inl])) / max(herr, 0.05 * tol)
    return _Fit(inliers=distinct(inl), tight=distinct(inl & (err <= tol)), matches=len(ib), matrix=m,
                mirrored=mirrored, residual=float(np.median(err[inl])) / tol if inl.any() else 1.0,
                perspective_gain=gain)


def _pixel_check(big: Features, small: Features, fit: _Fit) -> tuple[float, float]:
    """(ncc, overlap) of `big` warped onto `small`: correlation of blurred grey pixels where both exist,
    and the overlap's share of the smaller picture (both in the smaller picture's pixels)."""
    gb = cv2.flip(big.grey, 1) if fit.mirrored else big.grey
    m = fit.matrix
    s = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if s < 0.9:  # shrinking: smooth first so the warp does not alias
        gb = cv2.GaussianBlur(gb, (0, 0), 0.5 * (1 / s - 1) + 0.3)
    h, w = small.grey.shape
    warped = cv2.warpAffine(gb, m, (w, h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.full(gb.shape, 255, np.uint8), m, (w, h), flags=cv2.INTER_NEAREST)
    mask = cv2.erode(mask, np.ones((5, 5), np.uint8)) > 0
    area = int(mask.sum())
    if area < 200:
        return 0.0, 0.0
    a = cv2.GaussianBlur(small.grey, (0, 0), NCC_BLUR).astype(np.float32)
    b = cv2.GaussianBlur(warped, (0, 0), NCC_BLUR).astype(np.float32)
    ncc = _cell_ncc(a, b, mask)
    # overlap: the larger of the shares of either picture's textured pixels the other one covers (a crop
    # covers all of itself; a picture pasted onto another covers all of the original), textured pixels
    # only, so a flat border added around a copy does not lower it
    textured = small.textured()
    share_small = float((mask & textured).sum()) / max(1, int(textured.sum()))
    inv = cv2.invertAffineTransform(m)
    hb, wb = gb.shape
    back = cv2.warpAffine(np.full((h, w), 255, np.uint8), inv, (wb, hb), flags=cv2.INTER_NEAREST) > 0
    tb = cv2.flip(big.textured().astype(np.uint8), 1) > 0 if fit.mirrored else big.textured()
    share_big = float((back & tb).sum()) / max(1, int(tb.sum()))
    return ncc, max(share_small, share_big)


def _cell_ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Median over a CELLS x CELLS grid of the cells' normalised cross-correlations: robust to text or
    a logo pasted on part of a copy and to the filled corners of a tilted one."""
    h, w = mask.shape
    values = []
    for i in range(CELLS):
        for j in range(CELLS):
            sl = (slice(i * h // CELLS, (i + 1) * h // CELLS), slice(j * w // CELLS, (j + 1) * w // CELLS))
            m = mask[sl]
            if m.sum() < max(16, 0.5 * m.size):
                continue
            x, y = a[sl][m], b[sl][m]
            x = x - x.mean()
            y = y - y.mean()
            vx, vy = float((x * x).mean()), float((y * y).mean())
            if vx < 4 or vy < 4:  # flat (sky, a border added to a copy): no information
                continue
            values.append(float((x * y).mean()) / max(np.sqrt(vx * vy), 1e-6))
    return float(np.median(values)) if values else 0.0


def evidence_vector(c: Comparison) -> np.ndarray:
    """The calibration model's inputs for one comparison (each one larger for likelier copies, except
    the pHash distance, the residual and the perspective gain)."""
    tight_share = c.tight / c.inliers if c.inliers else 0.0
    ncc = -math.log(max(1e-3, 1.0 - min(c.ncc, 0.999))) if c.ncc > 0 else 0.0  # 0.9 -> 2.3, 0.99 -> 4.6
    residual = min(c.residual, 1.0) if c.inliers else 1.0
    perspective = min(math.log(max(c.perspective_gain, 1.0)), 2.0)
    return np.array([math.log1p(c.tight), tight_share, ncc, c.overlap, min(c.phash_distance, 32) / 32,
                     residual, perspective], np.float64)


def calibrated(x: np.ndarray) -> float:
    z = float(np.dot(COEF, x) + INTERCEPT)
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


def verdict_of(score: float, cosine: float | None) -> str:
    if score >= DUPLICATE_AT:
        return "duplicate"
    return "similar" if cosine is not None and cosine >= SIMILAR_COSINE else "different"


def compare_features(fa: Features, fb: Features, *, cosine: float | None = None) -> Comparison:
    """Verify one pair from its features (the expensive part of `compare`, a few ms). Symmetric: the
    larger picture is mapped onto the smaller one."""
    big, small = (fa, fb) if fa.area >= fb.area else (fb, fa)
    phash = int(np.min((small.phashes[0][None, :] != big.phashes).sum(axis=1)))
    best = _fit(big, small, big.keypoints, big.descriptors, mirrored=False)
    if best.tight < CONVINCING:  # not convincing as it is: try the mirror image too
        mirror = _fit(big, small, *big.mirrored(), mirrored=True)
        if mirror.tight > best.tight:
            best = mirror
    c = Comparison(score=0.0, verdict="different", check="none", inliers=best.inliers, tight=best.tight,
                   matches=best.matches, inlier_ratio=best.inliers / best.matches if best.matches else 0.0,
                   residual=best.residual, perspective_gain=best.perspective_gain, mirrored=best.mirrored,
                   phash_distance=phash, cosine=cosine)
    if best.matrix is not None and best.inliers >= MIN_MATCHES:
        c.check = "geometry"
        c.ncc, c.overlap = _pixel_check(big, small, best)
        m = best.matrix
        c.rotation = math.degrees(math.atan2(m[1, 0], m[0, 0]))
        c.scale = float(np.sqrt(abs(np.linalg.det(m[:, :2])))) * (big.size[0] / big.grey.shape[1]) \
            / (small.size[0] / small.grey.shape[1])
    c.score = calibrated(evidence_vector(c))
    if phash <= PHASH_NEAR and c.score < DUPLICATE_AT:
        c.score, c.check = 0.5 + 0.5 * (PHASH_NEAR + 1 - phash) / (PHASH_NEAR + 1), "phash"
    c.verdict = verdict_of(c.score, cosine)
    return c


def identical(cosine: float | None = None) -> Comparison:
    """The comparison of two files with the same bytes."""
    return Comparison(score=1.0, verdict="duplicate", check="content-hash", inlier_ratio=1.0, ncc=1.0,
                      overlap=1.0, phash_distance=0, cosine=cosine)


def compare(image_a: Image.Image | np.ndarray, image_b: Image.Image | np.ndarray,
            vector_a: np.ndarray | None = None, vector_b: np.ndarray | None = None) -> Comparison:
    """Is one picture a copy of the other? Vectors (plain, L2-normalised embeddings), when given, only
    tell "similar" from "different" among non-copies."""
    cosine = None
    if vector_a is not None and vector_b is not None:
        cosine = float(np.dot(np.asarray(vector_a, np.float32), np.asarray(vector_b, np.float32)))
    return compare_features(extract(image_a), extract(image_b), cosine=cosine)


@dataclass
class PairVerdict:
    """`Library.compare`'s answer: the copy check decides "duplicate", the embedding cosine tells
    "similar" from "different" among the rest. `score` is the copy confidence in [0, 1]; `similarity`
    the plain cosine (compare.Comparison, whose keys the JSON keeps)."""

    similarity: Any  # compare.Comparison
    copy: Comparison
    similar_at: float

    @property
    def score(self) -> float:
        return self.copy.score

    @property
    def verdict(self) -> str:
        if self.copy.is_copy:
            return "duplicate"
        return "similar" if self.similarity.score >= self.similar_at else "different"

    @property
    def model(self) -> str:
        return self.similarity.model

    def to_dict(self) -> dict[str, Any]:
        d = self.similarity.to_dict()
        d.update(score=round(self.score, 6), verdict=self.verdict, similarity=round(self.similarity.score, 6),
                 copy=self.copy.to_dict())
        d["thresholds"] = {**d.get("thresholds", {}), "duplicate_score": DUPLICATE_AT}
        return d
