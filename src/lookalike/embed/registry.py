"""Embedders by name. A collection stores the resolved name, so a later run can't mix models."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import LookalikeError
from .base import Embedder, ModelCard

DEFAULT_MODEL = "efficientnet-lite0+mobilenet-v3-small"  # chosen by measurement: docs/benchmarks.md
FALLBACK_MODEL = "efficientnet-lite0"  # the default's best part, when MediaPipe's file is not at hand
_FUSED_DEFAULT = [("efficientnet-lite0", 1.4), ("mobilenet-v3-small", 1.0)]
_warned: set[str] = set()


@dataclass
class Entry:
    factory: Callable[[Path, int], Embedder]  # (model cache dir, threads) -> embedder
    card: Callable[[], ModelCard]


_REGISTRY: dict[str, Entry] = {}
log = logging.getLogger("lookalike")


def register(name: str, factory: Callable[[Path, int], Embedder], card: Callable[[], ModelCard]) -> None:
    _REGISTRY[name] = Entry(factory, card)


def resolve(name: str | None, cache_dir: Path | None = None, *, fetch: bool = False) -> str:
    """The model a name means. "default" is the fused model when MediaPipe's file is here (or, with
    `fetch`, can be downloaded now); else EfficientNet-Lite0 alone, with a warning."""
    if name not in (None, "", "default"):
        return name  # type: ignore[return-value]
    from . import mediapipe

    if mediapipe.locate(cache_dir) is not None:
        return DEFAULT_MODEL
    if not fetch:
        return DEFAULT_MODEL if not mediapipe.offline() else FALLBACK_MODEL
    if mediapipe.model_path(cache_dir, fetch=True) is not None:
        return DEFAULT_MODEL
    if FALLBACK_MODEL not in _warned:
        _warned.add(FALLBACK_MODEL)
        log.warning("MediaPipe's embedder file is not at hand, so new collections use %s instead of %s; "
                    "see `lookalike models`", FALLBACK_MODEL, DEFAULT_MODEL)
    return FALLBACK_MODEL


def get_embedder(name: str | None, cache_dir: Path, *, threads: int = 0) -> Embedder:
    resolved = resolve(name, cache_dir, fetch=True)
    entry = _REGISTRY.get(resolved)
    from . import torch_models, trained

    if entry is None and trained.exists(cache_dir, resolved):  # trained on this library's pictures
        return trained.load(cache_dir, resolved, lambda base: get_embedder(base, cache_dir, threads=threads),
                            threads=threads)
    if entry is None and resolved.startswith(torch_models.PREFIXES):
        return torch_models.make_embedder(torch_models.spec_for(resolved), cache_dir, threads=threads)
    if entry is None and "+" in resolved:
        from .ensemble import FusedEmbedder, parse

        parts = [(get_embedder(part, cache_dir, threads=threads), weight) for part, weight in parse(resolved)]
        return FusedEmbedder(resolved, parts)
    if entry is None:
        raise LookalikeError(f"unknown model '{resolved}'; `lookalike models` lists the available ones "
                             "(fuse two with a+b)")
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
    _register_default()


def _register_default() -> None:
    from . import mediapipe
    from .ensemble import FusedEmbedder

    description = ("default: EfficientNet-Lite0 GeM (weight 1.4) fused with the MediaPipe embedder; "
                   "best quality and speed measured offline")

    def factory(cache: Path, threads: int) -> Embedder:
        parts = [(get_embedder(name, cache, threads=threads), weight) for name, weight in _FUSED_DEFAULT]
        return FusedEmbedder(DEFAULT_MODEL, parts, description)

    def card() -> ModelCard:
        parts = {c.name: c for c in (_REGISTRY[n].card() for n, _ in _FUSED_DEFAULT)}
        lite, mp = parts["efficientnet-lite0"], parts[mediapipe.NAME]
        return ModelCard(name=DEFAULT_MODEL, dim=lite.dim + mp.dim, input_size=lite.input_size, text=True,
                         licence="Apache-2.0", source=f"{lite.source} + {mp.source}", description=description,
                         available=lite.available and mp.available,
                         extra={"parts": [{"model": n, "weight": w} for n, w in _FUSED_DEFAULT],
                                "text": "through efficientnet-lite0's offline fallback",
                                "fallback": FALLBACK_MODEL})

    register(DEFAULT_MODEL, factory, card)


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
