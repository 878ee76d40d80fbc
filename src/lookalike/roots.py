"""Allowed roots: the folders a server (or a locked-down library) may read files from.

A request names a path; it is resolved (symlinks and `..` followed) and must then lie inside one of the
roots, so no spelling of a path reaches outside them.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import LookalikeError, NotFound, NotPermitted


def is_within(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


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
