"""Opt-in int8 EfficientNet: a separate model name, vectors close to fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.embed import get_embedder

from ..conftest import ukbench_images


def test_int8_lite0_is_close_to_fp32(model_cache: Path) -> None:
    fp32 = get_embedder("efficientnet-lite0", model_cache, threads=1)
    int8 = get_embedder("efficientnet-lite0-int8", model_cache, threads=1)
    assert int8.name == "efficientnet-lite0-int8" and int8.dim == fp32.dim
    images = [Image.open(p).convert("RGB") for p in ukbench_images(4)]
    a, b = fp32.embed_images(images), int8.embed_images(images)
    cos = (a * b).sum(axis=1)
    assert cos.min() > 0.8, cos  # bench/models.py: mean 0.89 over 200 UKBench pictures
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    graph = next(model_cache.glob("efficientnet-lite0-*-int8-dynamic.onnx"))
    assert graph.stat().st_size < 0.4 * next(model_cache.glob("efficientnet-lite0-224-v[0-9].onnx")).stat().st_size
