"""What names and ids the library accepts, in one place: the store enforces them, the Library checks ids
before they reach SQLite, and the HTTP schema declares them, so all three agree."""

from __future__ import annotations

import re

COLLECTION_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"  # 1-64 letters, digits, '_' and '-'
COLLECTION_NAME_RE = re.compile(COLLECTION_NAME)
MAX_IMAGE_ID = 2**63 - 1  # SQLite's INTEGER PRIMARY KEY range (ids start at 1)
MAX_TEXT = 1000  # characters of a text query
MAX_SPEC = 200  # characters of a model name or an index spec


def valid_image_id(image_id: int) -> bool:
    return 1 <= image_id <= MAX_IMAGE_ID
