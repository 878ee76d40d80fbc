"""Torch-gated: export to ONNX with a numeric check, and CLIP/timm loaders on random-weight models.

Real weights are downloaded on first use, which tests can't do, so each family is built with
`pretrained=False`: shapes, preprocessing, tokenisation, normalisation and the ONNX path are checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from lookalike.embed import export, torch_models  # noqa: E402
from lookalike.errors import LookalikeError  # noqa: E402


def _pictures() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (90 + 10 * i, 120, 3), dtype=np.uint8)) for i in range(3)]


def test_export_any_module_matches_torch(tmp_path: Path) -> None:
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                 torch.nn.Flatten())
    report = export.export_module(module, torch.randn(1, 3, 32, 32), tmp_path / "m.onnx",
                                  input_names=["x"], output_names=["y"])
    assert report.path.is_file() and report.max_abs_diff < 1e-5
    assert report.shapes == [(2, 8)], "the check ran a second batch size through the dynamic axis"


def test_export_refuses_a_mismatch(tmp_path: Path) -> None:
    class Noisy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.rand(1).item()  # traced as a constant: ONNX differs from the next torch call

    with pytest.raises(LookalikeError, match="differs from torch"):
        export.export_module(Noisy(), torch.zeros(1, 4), tmp_path / "n.onnx", input_names=["x"], output_names=["y"],
                             atol=1e-9)
    assert not (tmp_path / "n.onnx").exists()


def test_preprocess_resizes_crops_and_normalises() -> None:
    pre = torch_models.Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), crop_pct=0.875)
    x = pre(Image.new("RGB", (100, 50), (255, 128, 0)))
    assert x.shape == (3, 32, 32)
    assert np.allclose(x[:, 16, 16], [(1 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.25, -2.0], atol=1e-5)


def test_timm_vit_random_weights_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    spec = torch_models.Spec("test-vit", "timm", "vit_tiny_patch16_224", image_size=32)
    emb = torch_models.OnnxTorchEmbedder(spec, tmp_path, threads=1, pretrained=False)
    vecs = emb.embed_images(_pictures())
    assert vecs.shape == (3, 192) and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert emb.built.max_abs_diff["image"] < 1e-3
    again = torch_models.OnnxTorchEmbedder(spec, tmp_path, pretrained=False)  # cached: no torch work
    assert np.allclose(again.embed_images(_pictures()), vecs, atol=1e-5)


def test_any_timm_model_by_name_random_weights(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    spec = torch_models.spec_for("timm:resnet18")
    emb = torch_models.OnnxTorchEmbedder(spec, tmp_path, threads=1, pretrained=False)
    assert emb.dim == 512 and emb.embed_images(_pictures()).shape == (3, 512)
    assert all(":" not in p.name for p in tmp_path.iterdir())


def test_open_clip_random_weights_text_and_image(tmp_path: Path) -> None:
    open_clip = pytest.importorskip("open_clip")
    from open_clip import factory

    factory._MODEL_CONFIGS["lookalike-tiny-test"] = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    tokens = torch_models.tokenize(["a photo of a dog"])
    assert tokens.shape == (1, 77) and tokens.dtype == np.int64
    assert tokens[0, 0] == 49406 and 49407 in tokens[0], "start and end-of-text tokens"
    assert np.array_equal(tokens, open_clip.get_tokenizer("ViT-B-32")(["a photo of a dog"]).numpy())
    spec = torch_models.Spec("test-clip", "open_clip", "lookalike-tiny-test")
    emb = torch_models.OnnxTorchEmbedder(spec, tmp_path, threads=1, pretrained=False)
    assert emb.card.text and emb.dim == 32
    images, texts = emb.embed_images(_pictures()), emb.embed_text(["a dog", "a red car"])
    assert images.shape == (3, 32) and texts.shape == (2, 32)
    assert np.allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert set(emb.built.max_abs_diff) == {"image", "text"}
