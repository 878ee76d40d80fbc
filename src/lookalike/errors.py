"""Errors a user can act on. The CLI prints them as one line and exits 1."""

from __future__ import annotations


class LookalikeError(Exception):
    """A problem with the user's input or library: message says what is wrong and what to do."""


class UnknownCollection(LookalikeError):
    pass


class ModelMismatch(LookalikeError):
    pass


class EmptyLibrary(LookalikeError):
    pass


class DecodeError(LookalikeError):
    """An image could not be read. `reason` is a short machine-friendly tag (e.g. 'truncated')."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class StaleWrite(LookalikeError):
    """A derived write (e.g. refinement) was computed from a state another writer has since changed."""
