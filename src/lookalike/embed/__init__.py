"""Embedders: pictures (and, for some models, text) to vectors. See `registry` for names."""

from .base import Embedder, ModelCard, l2_normalise
from .registry import DEFAULT_MODEL, FALLBACK_MODEL, get_embedder, model_cards, register, resolve

__all__ = ["DEFAULT_MODEL", "FALLBACK_MODEL", "Embedder", "ModelCard", "get_embedder", "l2_normalise", "model_cards",
           "register", "resolve"]
