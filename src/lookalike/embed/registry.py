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


_register_builtin()
