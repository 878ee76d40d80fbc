"""Embedders by name. A collection stores the resolved name, so a later run can't mix models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import LookalikeError
from .base import Embedder, ModelCard

DEFAULT_MODEL = "efficientnet-lite2"


@dataclass
class Entry:
    factory: Callable[[Path, int], Embedder]  # (model cache dir, threads) -> embedder
    card: Callable[[], ModelCard]


_REGISTRY: dict[str, Entry] = {}


def register(name: str, factory: Callable[[Path, int], Embedder], card: Callable[[], ModelCard]) -> None:
    _REGISTRY[name] = Entry(factory, card)


def resolve(name: str | None) -> str:
    return DEFAULT_MODEL if name in (None, "", "default") else name  # type: ignore[return-value]


def get_embedder(name: str | None, cache_dir: Path, *, threads: int = 0) -> Embedder:
    resolved = resolve(name)
    entry = _REGISTRY.get(resolved)
    if entry is None:
        raise LookalikeError(f"unknown model '{resolved}'; `lookalike models` lists the available ones")
    return entry.factory(cache_dir, threads)


def model_cards() -> list[ModelCard]:
    return [entry.card() for entry in _REGISTRY.values()]


def _register_builtin() -> None:
    from . import efficientnet as eff

    for variant in ("lite0", "lite2"):
        register(
            f"efficientnet-{variant}",
            lambda cache, threads, v=variant: eff.EfficientNetLite(v, cache, threads=threads,
                                                                  name=f"efficientnet-{v}"),
            lambda v=variant: eff.card(v),
        )
    _register_zoo()


def _register_zoo() -> None:
    """Hashes, MediaPipe, int8 EfficientNet, and the torch-based families (weights fetched on first use)."""
    from . import hashes, mediapipe, quantize, torch_models

    for kind in ("phash", "dhash", "whash"):
        register(kind, lambda cache, threads, k=kind: hashes.PerceptualHash(k), lambda k=kind: hashes.card(k))
    register(mediapipe.NAME, lambda cache, threads: mediapipe.MediaPipeEmbedder(cache, threads=threads),
             mediapipe.card)
    for variant in ("lite0", "lite2"):
        register(f"efficientnet-{variant}-int8",
                 lambda cache, threads, v=variant: quantize.EfficientNetLiteInt8(v, cache, threads=threads),
                 lambda v=variant: quantize.card(v))
    for spec in torch_models.BUILTIN:
        register(spec.name, lambda cache, threads, s=spec: torch_models.make_embedder(s, cache, threads=threads),
                 lambda s=spec: torch_models.card(s))


_register_builtin()
