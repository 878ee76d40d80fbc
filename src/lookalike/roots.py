"""Allowed roots: the folders a server (or a locked-down library) may read files from.

A request names a path; it is resolved (symlinks and `..` followed) and must then lie inside one of the
roots, so no spelling of a path reaches outside them. A walk under a root (`decode.walk_images(...,
within=roots)`) applies the same rule to every folder and file it reaches: a symlink is followed only where
its target stays inside a root; anything else is skipped as `outside-root`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .errors import LookalikeError, NotFound, NotPermitted


def is_within(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def parse_roots(value: Any) -> list[str]:
    """A root list as configured: a TOML list, or an env var separated by commas or os.pathsep (like $PATH)."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value if str(v)]
    return [part.strip() for part in re.split(f"[,{re.escape(os.pathsep)}]", str(value)) if part.strip()]


def resolve_roots(roots: list[str] | list[Path] | list[str | os.PathLike[str]]) -> list[Path]:
    """Configured roots as the absolute, symlink-free folders every path is compared against."""
    return [Path(r).expanduser().resolve() for r in roots if str(r)]


def outside_detail(path: Path, resolved: Path) -> str:
    """Why a walked file or folder is skipped: where it really points."""
    return f"resolves to {resolved}, outside the allowed roots"


def resolve_within(raw: str, roots: list[Path]) -> Path:
    """`raw` resolved, if it is an absolute path inside one of the (resolved) `roots`."""
    if not roots:
        raise NotPermitted("server-side indexing is off: list the folders it may read in LOOKALIKE_ALLOWED_ROOTS "
                           "(or allowed_roots in lookalike.toml)", code="indexing-disabled")
    if not raw or "\x00" in raw or not os.path.isabs(os.path.expanduser(raw)):
        raise LookalikeError(f"'{raw}' is not an absolute path", code="bad-path")
    resolved = Path(os.path.expanduser(raw)).resolve()
    if not is_within(resolved, roots):
        raise NotPermitted(f"'{raw}' is outside the folders this server may index: "
                           + ", ".join(str(r) for r in roots), code="outside-allowed-roots")
    if not resolved.exists():
        raise NotFound(f"'{raw}' does not exist on the server")
    return resolved
