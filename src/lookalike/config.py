"""Where the library lives and the knobs every part reads, resolved in one place.

Precedence: explicit argument (CLI flag) > environment variable > config file (`lookalike.toml` in the
library directory) > built-in default.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

import platformdirs

from .compare import Thresholds
from .errors import LookalikeError
from .roots import parse_roots

DEFAULT_COLLECTION = "default"


def library_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The library directory: flag, then $LOOKALIKE_HOME, then the user's data dir."""
    raw = explicit or os.environ.get("LOOKALIKE_HOME") or platformdirs.user_data_dir("lookalike")
    return Path(raw).expanduser().resolve()


@dataclass
class Settings:
    """Tunable settings; every field can be set by env var LOOKALIKE_<NAME> or in lookalike.toml."""

    model: str = "default"
    batch_size: int = 32
    decode_workers: int = 0  # 0: pick from the CPU count
    commit_every: int = 64  # images per catalogue transaction while indexing
    max_pixels: int = 120_000_000  # larger images are refused as decompression bombs
    max_file_bytes: int = 200 * 1024 * 1024
    intra_op_threads: int = 0  # 0: ONNX Runtime picks (physical cores)
    exact_below: int = 50_000  # collections smaller than this use exact search
    dba_k: int = 4  # new collections: database-side augmentation over this many neighbours (0: off)
    qe_k: int = 5  # new collections: query expansion over this many top hits (0: off)
    duplicate_threshold: float = 0.95  # compare: plain cosine at or above -> "duplicate"
    similar_threshold: float = 0.70  # compare: at or above -> "similar"
    # folders files may be read from (`index`, and the server's index jobs); empty: anywhere for the CLI, and
    # no server-side indexing. Env: separated by commas or os.pathsep. One list: the server reads it too.
    allowed_roots: list[str] = field(default_factory=list)
    decode_memory_mb: int = 0  # pixel memory concurrent decodes may hold at once (0: 1/8 of RAM, 256-1024 MiB)
    decode_wait: float = 5.0  # seconds a search/upload waits for decode memory before answering "busy"
    write_wait: float = 30.0  # seconds an upload/replace/remove waits for another write to finish, then "busy"
    engine: str = "local"  # `index --engine`: local, local-cluster, or a Dask scheduler address (engine.py)
    engine_workers: int = 0  # worker processes of `--engine local-cluster` (0: the CPU count, at most 8)
    # where vectors and catalogue live: "embedded" (Faiss + SQLite here) or "milvus:<uri>" (store/__init__.py)
    store: str = "embedded"
    extra: dict[str, object] = field(default_factory=dict)

    @classmethod
    def load(cls, home: Path, **overrides: object) -> Settings:
        values: dict[str, object] = {}
        config_file = home / "lookalike.toml"
        if config_file.exists():
            with config_file.open("rb") as fh:
                values.update(tomllib.load(fh))
            table = values.get("server")
            if "allowed_roots" not in values and isinstance(table, dict) and "allowed_roots" in table:
                values["allowed_roots"] = table["allowed_roots"]  # where the server's docs put it
        for f in fields(cls):
            env = os.environ.get(f"LOOKALIKE_{f.name.upper()}")
            if env is not None and f.name != "extra":
                values[f.name] = env
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, object] = {}
        extra: dict[str, object] = {}
        for key, value in values.items():
            if key not in known:
                extra[key] = value
                continue
            default = getattr(cls(), key)
            if key == "allowed_roots":
                kwargs[key] = parse_roots(value)
                continue
            try:
                kwargs[key] = type(default)(value) if isinstance(default, int | float | str) else value
            except (TypeError, ValueError) as exc:
                raise LookalikeError(f"setting {key}={value!r} is not a valid {type(default).__name__}") from exc
        out = cls(**kwargs, extra=extra)
        out.thresholds()  # refuses an impossible pair now, not at the first compare
        return out

    def thresholds(self) -> Thresholds:
        return Thresholds(duplicate=self.duplicate_threshold, similar=self.similar_threshold)

    def workers(self) -> int:
        return self.decode_workers or max(2, min(8, (os.cpu_count() or 2)))
