"""lookalike: self-hosted reverse image search."""

import os

# No traffic off the machine: ONNX Runtime's telemetry looks up an outside host ~9 s after a session
# starts unless ORT_DISABLE_TELEMETRY=1 is set before onnxruntime is first imported (later is too late),
# so it is set here, ahead of every submodule; processes started from this one inherit it.
# LOOKALIKE_ORT_TELEMETRY=1 leaves ONNX Runtime's default alone.
if os.environ.get("LOOKALIKE_ORT_TELEMETRY", "").lower() not in ("1", "true", "yes"):
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from .errors import LookalikeError
from .library import Hit, IndexReport, Library
from .store import CollectionInfo, Filter, ImageRecord

__version__ = "0.1.0"

__all__ = ["CollectionInfo", "Filter", "Hit", "ImageRecord", "IndexReport", "Library", "LookalikeError",
           "__version__"]
