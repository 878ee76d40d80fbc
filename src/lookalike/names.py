"""What names and ids the library accepts, in one place: the store enforces them, the Library checks ids
before they reach SQLite, and the HTTP schema declares them, so all three agree."""

from __future__ import annotations

import re

COLLECTION_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"  # 1-64 letters, digits, '_' and '-'
COLLECTION_NAME_RE = re.compile(COLLECTION_NAME)
# a collection's region vectors (issue 17) live in a companion collection "<name>~regions": '~' is not
# allowed in a user's name, so no collection can clash with one, and "<name>.*.faiss" globs don't see it
REGIONS_SUFFIX = "~regions"
MAX_IMAGE_ID = 2**53 - 1  # within SQLite's INTEGER range and exact in every JSON client (JavaScript's safe integers)
MAX_TEXT = 1000  # characters of a text query
MAX_SPEC = 200  # characters of a model name or an index spec


def valid_image_id(image_id: int) -> bool:
    return 1 <= image_id <= MAX_IMAGE_ID


def regions_of(collection: str) -> str:
    """The companion collection that holds `collection`'s region vectors."""
    return collection + REGIONS_SUFFIX


def is_regions_name(name: str) -> bool:
    return name.endswith(REGIONS_SUFFIX) and bool(COLLECTION_NAME_RE.match(name[:-len(REGIONS_SUFFIX)]))
