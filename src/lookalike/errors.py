"""Errors a user can act on. The CLI prints them as one line and exits 1; the HTTP service maps each class
to one status (server/errors.py) and sends `code` as the body's machine-readable `error`.
"""

from __future__ import annotations

from typing import Any


class LookalikeError(Exception):
    """A problem with the user's input or library: message says what is wrong and what to do.

    `code` is a stable tag for machines (default per class, or given); `extra` carries fields an API
    answer adds to its body (e.g. the index of the upload at fault in a bulk request)."""

    code = "bad-request"

    def __init__(self, message: str = "", *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        if code:
            self.code = code
        self.extra: dict[str, Any] = dict(extra)

    def reworded(self, prefix: str = "", suffix: str = "", **extra: Any) -> LookalikeError:
        """The same error with context around its message (e.g. which of two images it is about)."""
        self.args = (f"{prefix}{self.args[0] if self.args else ''}{suffix}", *self.args[1:])
        self.extra.update(extra)
        return self


class UnknownCollection(LookalikeError):
    code = "unknown-collection"


class UnknownImage(LookalikeError):
    code = "unknown-image"


class NotFound(LookalikeError):
    """Something the request names is not there (a server-side path, an image's bytes)."""

    code = "missing"


class AlreadyExists(LookalikeError):
    code = "exists"


class NotPermitted(LookalikeError):
    """The library's configuration does not allow this (e.g. a folder outside the allowed roots)."""

    code = "forbidden"


class ModelMismatch(LookalikeError):
    code = "model-mismatch"


class FileChanged(LookalikeError):
    """A catalogued file no longer matches its catalogue row (size, mtime or content): re-index it."""

    code = "file-changed"


class Busy(LookalikeError):
    """The service is at capacity for this kind of work (e.g. decode memory); try again after `retry_after`
    seconds."""

    code = "busy"

    def __init__(self, message: str = "", *, retry_after: int = 1, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.retry_after = retry_after


class EmptyLibrary(LookalikeError):
    code = "empty-collection"


class DecodeError(LookalikeError):
    """An image could not be read. `reason` is a short machine-friendly tag (e.g. 'truncated')."""

    def __init__(self, reason: str, detail: str = "", message: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(message or (f"{reason}: {detail}" if detail else reason), code=reason)

    def __reduce__(self) -> tuple[Any, ...]:  # survives pickling (process pools) with its reason
        return (DecodeError, (self.reason, self.detail, str(self)))


class StaleWrite(LookalikeError):
    """A derived write (e.g. refinement) was computed from a state another writer has since changed."""


class EngineError(LookalikeError):
    """A distributed engine (`index --engine`) is unknown, cannot be started or reached, or its workers fail."""

    code = "engine-error"
