"""Any timm / open_clip model by name: parsing, cache file names, and a clear error without the extra."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lookalike.embed import get_embedder
from lookalike.embed.torch_models import _file_stem, spec_for
from lookalike.errors import LookalikeError


def test_timm_and_open_clip_names(tmp_path: Path) -> None:
    spec = spec_for("timm:convnext_tiny.fb_in22k")
    assert (spec.family, spec.arch, spec.weights) == ("timm", "convnext_tiny.fb_in22k", "")
    spec = spec_for("open_clip:ViT-B-16/laion2b_s34b_b88k")
    assert (spec.family, spec.arch, spec.pretrained) == ("open_clip", "ViT-B-16", "laion2b_s34b_b88k")
    assert spec_for("open_clip:ViT-B-32").pretrained == "openai"
    weights = tmp_path / "ckpt.bin"
    weights.write_bytes(b"x")
    spec = spec_for(f"timm:resnet50@{weights}")
    assert spec.arch == "resnet50" and spec.weights == str(weights)
    with pytest.raises(LookalikeError, match="does not exist"):
        spec_for("timm:resnet50@/no/such/file.bin")
    for bad in ("timm:", "tf:resnet50"):
        with pytest.raises(LookalikeError, match="invalid model name"):
            spec_for(bad)


def test_cache_file_names_are_safe_and_distinct() -> None:
    a, b = _file_stem("open_clip:ViT-B-16/laion2b"), _file_stem("open_clip:ViT-B-16/laion2b@/x.bin")
    assert "/" not in a and ":" not in a and a != b
    assert _file_stem("timm-resnet50") == "timm-resnet50"


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm installed: it would download")
def test_without_the_extra_the_error_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(LookalikeError, match="pip install"):
        get_embedder("timm:resnet18", tmp_path)
