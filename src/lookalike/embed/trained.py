"""Models trained on a library's own pictures (`lookalike train`): the pretrained backbone, then a head.

A trained model lives in `<library>/models/trained/<name>/`: `head.onnx` (a small projection trained on
backbone vectors, see lookalike.train) and `card.json` (its model card: base model, data, parameters,
split, figures before/after, date, version). Its embedder runs the base model's ONNX graph(s) and then
the head's, and L2-normalises the result; nothing here imports torch.

Versions: a trained model's vectors are named `<name>@<version>`, the version being the first hex
digits of the head file's SHA-256. A collection records that full name, so one indexed before a model
was retrained (`--force`) refuses the new model's vectors instead of mixing two spaces.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import LookalikeError, ModelMismatch
from .base import Embedder, ModelCard, l2_normalise
from .runtime import make_session

SUBDIR = "trained"
HEAD_FILE = "head.onnx"
CARD_FILE = "card.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def folder(model_dir: Path, name: str) -> Path:
    return model_dir / SUBDIR / name


def split_version(name: str) -> tuple[str, str | None]:
    """'flowers-sup@1a2b3c4d5e' -> ('flowers-sup', '1a2b3c4d5e'); 'flowers-sup' -> ('flowers-sup', None)."""
    base, sep, version = name.partition("@")
    return base, (version if sep else None)


def file_version(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:10]


def exists(model_dir: Path | None, name: str) -> bool:
    if model_dir is None:
        return False
    base, _ = split_version(name)
    return bool(NAME_RE.match(base)) and (folder(model_dir, base) / CARD_FILE).is_file()


def read_card(model_dir: Path, name: str) -> dict[str, Any]:
    path = folder(model_dir, split_version(name)[0]) / CARD_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LookalikeError(f"trained model '{name}' is unreadable ({path}: {e}); train it again with --force") from e


def names(model_dir: Path) -> list[str]:
    root = model_dir / SUBDIR
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CARD_FILE).is_file() and NAME_RE.match(p.name))


def model_card(data: dict[str, Any], available: bool = True) -> ModelCard:
    """What `lookalike models` lists for a trained model: lineage and figures in `extra`."""
    metrics = data.get("metrics", {})
    figures = ""
    if metrics:
        figures = (f"; validation {metrics.get('metric', 'mAP@10')} {metrics.get('before', 0):.3f} -> "
                   f"{metrics.get('after', 0):.3f}")
    return ModelCard(
        name=f"{data['name']}@{data['version']}", dim=int(data["dim"]), input_size=int(data.get("input_size", 224)),
        licence=data.get("licence", ""), source=f"trained on collection '{data.get('collection', '?')}' from "
        f"{data['base']}", description=f"{data.get('mode', '?')} head on {data['base']}{figures}",
        available=available, extra={"trained": True, **{k: data.get(k) for k in (
            "base", "mode", "collection", "data", "parameters", "split", "metrics", "created", "version",
            "training_seconds")}})


class TrainedEmbedder(Embedder):
    """The base model's vector (frozen backbone), then the trained head, L2-normalised."""

    def __init__(self, data: dict[str, Any], head: Path, base: Embedder, *, threads: int = 0,
                 cache_dir: Path | None = None) -> None:
        if base.name != data["base"] or base.dim != int(data["input_dim"]):
            raise LookalikeError(f"trained model '{data['name']}' was trained on {data['base']} "
                                 f"({data['input_dim']}-d), which now resolves to {base.name} ({base.dim}-d)")
        self.base = base
        self.data = data
        self.head_path = head
        self.threads = threads
        self.cache_dir = cache_dir
        self._session: Any = None
        self.card = model_card(data)

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = make_session(self.head_path, threads=self.threads, device="cpu")
        return self._session

    @property
    def draft_size(self) -> int | None:
        return self.base.draft_size

    def prepare(self, image: Image.Image) -> Any:
        return self.base.prepare(image)

    def embed_prepared(self, batch: list[Any]) -> np.ndarray:
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.head(self.base.embed_prepared(batch))

    def head(self, features: np.ndarray) -> np.ndarray:
        """The head on backbone vectors (what training saw): (N, input_dim) -> (N, dim) unit vectors."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        return l2_normalise(self.session.run(None, {"features": x})[0])


def load(model_dir: Path, name: str, get_base: Any, *, threads: int = 0) -> TrainedEmbedder:
    """The trained model `name` (or `name@version`, which must be the current version)."""
    base_name, wanted = split_version(name)
    data = read_card(model_dir, base_name)
    head = folder(model_dir, base_name) / HEAD_FILE
    if not head.is_file():
        raise LookalikeError(f"trained model '{base_name}' has no {HEAD_FILE}; train it again with --force")
    if wanted is not None and wanted != data.get("version"):
        raise ModelMismatch(
            f"vectors of {name} were made by a version of '{base_name}' that no longer exists (it is now "
            f"{base_name}@{data.get('version')}, retrained); re-index into a new collection with --model {base_name}")
    return TrainedEmbedder(data, head, get_base(data["base"]), threads=threads, cache_dir=model_dir)
