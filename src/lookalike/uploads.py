"""Bytes of uploaded pictures, kept by content hash so `/file` and thumbnails can serve them later.

An upload has no file on disk the catalogue could point to, so its bytes live in `<library>/uploads/<sha256>`.
Several images (in several collections) may share one file; it is deleted once none refers to it.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path

UPLOAD_PREFIX = "upload:"  # catalogue paths of uploaded images: upload:<the client's id or the hash>
_HEX64 = re.compile(r"[0-9a-f]{64}")


def upload_path(name: str) -> str:
    """The catalogue path an upload called `name` is stored under."""
    return UPLOAD_PREFIX + name


def is_upload(path: str) -> bool:
    return path.startswith(UPLOAD_PREFIX)


class UploadStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _file(self, digest: str) -> Path | None:
        return self.folder / digest if _HEX64.fullmatch(digest or "") else None

    def put(self, data: bytes, digest: str) -> None:
        """Write atomically (temp file + rename), once per content."""
        target = self._file(digest)
        if target is None or target.exists():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{digest}.{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, target)

    def get(self, digest: str) -> bytes | None:
        target = self._file(digest)
        return target.read_bytes() if target is not None and target.is_file() else None

    def has(self, digest: str) -> bool:
        target = self._file(digest)
        return target is not None and target.is_file()

    def forget_unused(self, digests: set[str], used: Callable[[], set[str]]) -> None:
        """Delete the stored bytes among `digests` that no image refers to any more (`used()` says which do)."""
        present = {d for d in digests if (f := self._file(d)) is not None and f.exists()}
        if not present:
            return
        for digest in present - used():
            (self.folder / digest).unlink(missing_ok=True)
