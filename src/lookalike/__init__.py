"""lookalike: self-hosted reverse image search."""

from .errors import LookalikeError
from .library import Hit, IndexReport, Library
from .store import CollectionInfo, Filter, ImageRecord

__version__ = "0.1.0"

__all__ = ["CollectionInfo", "Filter", "Hit", "ImageRecord", "IndexReport", "Library", "LookalikeError",
           "__version__"]
