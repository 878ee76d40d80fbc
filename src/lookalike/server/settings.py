"""The service's own knobs: command-line flag > LOOKALIKE_* env var > lookalike.toml > default.

In `lookalike.toml` the keys may sit at the top level or in a `[server]` table:

    [server]
    port = 8080
    allowed_roots = ["/srv/photos"]
    cors_origins = ["https://photos.example.org"]
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import LookalikeError

MiB = 1024 * 1024


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str = ""  # when set, write endpoints need `X-API-Key` (or `Authorization: Bearer`)
    cors_origins: list[str] = field(default_factory=list)  # "*" or exact origins
    allowed_roots: list[str] = field(default_factory=list)  # folders the index endpoint may read
    max_upload_bytes: int = 20 * MiB  # one image
    max_bulk_bytes: int = 200 * MiB  # one bulk request
    max_upload_pixels: int = 50_000_000
    max_k: int = 1000
    thumbnail_size: int = 256
    log_format: str = "json"  # "json" (one object per line) or "text"
    log_level: str = "info"
    shutdown_timeout: float = 10.0  # seconds to finish requests and stop an index job

    @classmethod
    def load(cls, settings: Settings | None = None, **overrides: Any) -> ServerSettings:
        values: dict[str, Any] = {}
        if settings is not None:
            if settings.allowed_roots:  # the library's own list (lookalike.toml, env): one source of truth
                values["allowed_roots"] = list(settings.allowed_roots)
            extra = dict(settings.extra)
            table = extra.pop("server", {})
            names = {f.name for f in fields(cls)}
            values.update({k: v for k, v in extra.items() if k in names})
            if isinstance(table, dict):
                values.update(table)
        for f in fields(cls):
            env = os.environ.get(f"LOOKALIKE_{f.name.upper()}")
            if env is not None:
                values[f.name] = env
        values.update({k: v for k, v in overrides.items() if v is not None and v != () and v != []})
        return cls.from_values(values)

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> ServerSettings:
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                raise LookalikeError(f"unknown server setting '{key}'; known: {', '.join(sorted(known))}")
            default = getattr(cls(), key)
            try:
                if isinstance(default, list):
                    kwargs[key] = _as_list(value, paths=key == "allowed_roots")
                elif isinstance(default, bool):
                    kwargs[key] = str(value).lower() in ("1", "true", "yes", "on")
                elif isinstance(default, int):
                    kwargs[key] = int(value)
                elif isinstance(default, float):
                    kwargs[key] = float(value)
                else:
                    kwargs[key] = str(value)
            except (TypeError, ValueError) as exc:
                raise LookalikeError(f"server setting {key}={value!r} is not a valid "
                                     f"{type(default).__name__}") from exc
        out = cls(**kwargs)
        out.validate()
        return out

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise LookalikeError(f"port {self.port} is out of range; use 1-65535 (or 0 for any free port)")
        if self.log_format not in ("json", "text"):
            raise LookalikeError(f"log_format '{self.log_format}' is not json or text")
        for name in ("max_upload_bytes", "max_bulk_bytes", "max_upload_pixels", "max_k", "thumbnail_size"):
            if getattr(self, name) <= 0:
                raise LookalikeError(f"server setting {name} must be positive")

    def resolved_roots(self) -> list[Path]:
        return [Path(r).expanduser().resolve() for r in self.allowed_roots if r]


def _as_list(value: Any, *, paths: bool) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v) for v in value if str(v)]
    # env vars: comma-separated (and, for folders, also os.pathsep-separated like $PATH)
    sep = f"[,{re.escape(os.pathsep)}]" if paths else ","
    return [part.strip() for part in re.split(sep, str(value)) if part.strip()]
