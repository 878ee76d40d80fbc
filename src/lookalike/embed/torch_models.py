"""CLIP (open_clip) and timm models by name: exported once to ONNX, then run with ONNX Runtime.

Why this shape: torch, timm and open_clip are heavy optional extras (`lookalike[torch]`), and their
pretrained weights are downloaded from the Hugging Face hub on first use. So torch is used only to
build and export the model (`export.export_module`, with a numeric check); the ONNX graph, a JSON
file with the preprocessing, and for CLIP the text tower are cached in the library's models dir,
and indexing/search need only ONNX Runtime and numpy. Preprocessing is re-implemented in PIL/numpy
from the model's own config (resize shorter side, centre crop, mean/std), so torchvision is not
needed at run time either.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import LookalikeError
from .base import Embedder, ModelCard, l2_normalise
from .export import export_module, require_torch
from .runtime import make_session

GRAPH_VERSION = 1
CONTEXT_LENGTH = 77  # CLIP's text context
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST}
_lock = threading.Lock()


@dataclass(frozen=True)
class Spec:
    name: str  # registry name
    family: str  # "open_clip" or "timm"
    arch: str  # open_clip model name or timm model name (with pretrained tag)
    pretrained: str = ""  # open_clip pretrained tag
    licence: str = ""
    description: str = ""
    image_size: int | None = None  # override the model's default input size (e.g. DINOv2 at 224)
    weights: str = ""  # local checkpoint file instead of the hub download


PREFIXES = ("timm:", "open_clip:")


def spec_for(name: str) -> Spec:
    """Any timm or open_clip model by name, e.g. `timm:convnext_tiny.fb_in22k`,
    `open_clip:ViT-B-16/laion2b_s34b_b88k`; `@/path/to/file` uses a local checkpoint instead of the hub."""
    family, _, rest = name.partition(":")
    rest, _, weights = rest.partition("@")
    if f"{family}:" not in PREFIXES or not rest:
        raise LookalikeError(f"invalid model name '{name}': write timm:ARCH or open_clip:ARCH/PRETRAINED, "
                             "optionally followed by @/path/to/weights")
    if weights and not Path(weights).expanduser().is_file():
        raise LookalikeError(f"weights file '{weights}' for {name} does not exist")
    if family == "timm":
        return Spec(name, "timm", rest, licence="see the timm model card", description=f"timm {rest}",
                    weights=weights)
    arch, _, tag = rest.partition("/")
    return Spec(name, "open_clip", arch, tag or ("" if weights else "openai"), "see the open_clip model card",
                f"open_clip {arch} ({tag or 'openai'})", weights=weights)


BUILTIN: tuple[Spec, ...] = (
    Spec("clip-vit-b-32", "open_clip", "ViT-B-32", "openai", "MIT (OpenAI CLIP)",
         "OpenAI CLIP ViT-B/32: image and text in one 512-d space (zero-shot text search)"),
    Spec("timm-resnet50", "timm", "resnet50.a1_in1k", licence="Apache-2.0 (timm)",
         description="ResNet-50 ImageNet, global average pool, 2048-d"),
    Spec("timm-vgg16", "timm", "vgg16.tv_in1k", licence="BSD-3-Clause (torchvision weights)",
         description="VGG-16 ImageNet, pre-logits 4096-d"),
    Spec("timm-efficientnet-b2", "timm", "efficientnet_b2.ra_in1k", licence="Apache-2.0 (timm)",
         description="EfficientNet-B2 ImageNet, global average pool, 1408-d"),
    Spec("timm-vit-base-patch16-224", "timm", "vit_base_patch16_224.augreg2_in21k_ft_in1k",
         licence="Apache-2.0 (Google AugReg)", description="ViT-B/16 ImageNet-21k+1k, CLS token, 768-d"),
    Spec("dinov2-vits14", "timm", "vit_small_patch14_dinov2.lvd142m", licence="Apache-2.0 (Meta DINOv2)",
         description="DINOv2 ViT-S/14 self-supervised, CLS token, 384-d, run at 224px", image_size=224),
)
_KNOWN_DIMS = {"clip-vit-b-32": 512, "timm-resnet50": 2048, "timm-vgg16": 4096, "timm-efficientnet-b2": 1408,
               "timm-vit-base-patch16-224": 768, "dinov2-vits14": 384}


@dataclass
class Preprocess:
    """What the model expects: resize shorter side to size/crop_pct, centre crop, (x/255 - mean)/std, NCHW."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 1.0
    interpolation: str = "bicubic"

    def __call__(self, image: Image.Image) -> np.ndarray:
        if image.mode != "RGB":
            image = image.convert("RGB")
        short = int(self.size / self.crop_pct)
        w, h = image.size
        scale = short / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        image = image.resize((nw, nh), _RESAMPLE.get(self.interpolation, Image.Resampling.BICUBIC))
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        arr = np.asarray(image.crop((left, top, left + self.size, top + self.size)), dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return arr.transpose(2, 0, 1)


@dataclass
class Built:
    """A model exported to ONNX: image graph, optional text graph, preprocessing, dim, export error."""

    image_onnx: Path
    preprocess: Preprocess
    dim: int
    text_onnx: Path | None = None
    max_abs_diff: dict[str, float] = field(default_factory=dict)


def _torch_models(spec: Spec, pretrained: bool) -> tuple[Any, Any | None, Preprocess, Any | None]:
    """(image module, text module or None, preprocessing, tokenizer or None) built with torch."""
    torch = require_torch()
    if spec.family == "open_clip":
        try:
            import open_clip
        except ImportError as exc:
            raise LookalikeError(f"{spec.name} needs open_clip: `pip install open_clip_torch`") from exc
        source = str(Path(spec.weights).expanduser()) if spec.weights else spec.pretrained
        model = open_clip.create_model(spec.arch, pretrained=source if pretrained else None)
        model.eval()
        cfg = model.visual.preprocess_cfg if hasattr(model.visual, "preprocess_cfg") else {}
        size = model.visual.image_size
        size = size[0] if isinstance(size, tuple | list) else size
        pre = Preprocess(int(size), tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                         tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)), 1.0,
                         cfg.get("interpolation", "bicubic"))

        class ImageTower(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.m = model

            def forward(self, image: Any) -> Any:
                return self.m.encode_image(image)

        class TextTower(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.m = model

            def forward(self, tokens: Any) -> Any:
                return self.m.encode_text(tokens)

        return ImageTower(), TextTower(), pre, open_clip.get_tokenizer(spec.arch)
    try:
        import timm
    except ImportError as exc:
        raise LookalikeError(f"{spec.name} needs timm: `pip install timm`") from exc
    kwargs: dict[str, Any] = {"num_classes": 0}
    if spec.weights and pretrained:
        kwargs["pretrained_cfg_overlay"] = {"file": str(Path(spec.weights).expanduser())}
    if spec.image_size:
        kwargs["img_size"] = spec.image_size
    try:
        model = timm.create_model(spec.arch, pretrained=pretrained, **kwargs).eval()
    except TypeError:  # CNNs take any size and have no img_size argument
        kwargs.pop("img_size", None)
        model = timm.create_model(spec.arch, pretrained=pretrained, **kwargs).eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    size = spec.image_size or int(cfg["input_size"][-1])
    pre = Preprocess(size, tuple(cfg["mean"]), tuple(cfg["std"]), float(cfg.get("crop_pct", 1.0)),
                     str(cfg.get("interpolation", "bicubic")))
    return model, None, pre, None


def build(spec: Spec, cache_dir: Path, *, pretrained: bool = True) -> Built:
    """Export `spec` to ONNX under cache_dir (once; `pretrained=False` builds random weights, for tests)."""
    tag = "" if pretrained else "-random"
    stem = cache_dir / f"{_file_stem(spec.name)}{tag}-v{GRAPH_VERSION}"
    meta_path = stem.with_suffix(".json")
    with _lock:
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            return Built(Path(meta["image_onnx"]), Preprocess(**meta["preprocess"]), meta["dim"],
                         Path(meta["text_onnx"]) if meta.get("text_onnx") else None, meta["max_abs_diff"])
        torch = require_torch()
        image_module, text_module, pre, tokenizer = _torch_models(spec, pretrained)
        x = torch.from_numpy(np.stack([pre(Image.new("RGB", (300, 200), (120, 60, 30)))]))
        x = x + 0.1 * torch.randn_like(x)
        image = export_module(image_module, x, stem.with_name(stem.name + "-image.onnx"),
                              input_names=["image"], output_names=["embedding"], atol=1e-3)
        built = Built(image.path, pre, int(image.shapes[0][-1]), max_abs_diff={"image": image.max_abs_diff})
        if text_module is not None and tokenizer is not None:
            tokens = tokenizer(["a photo of a dog", "a red car"])
            text = export_module(text_module, tokens, stem.with_name(stem.name + "-text.onnx"),
                                 input_names=["tokens"], output_names=["embedding"], atol=1e-3)
            built.text_onnx = text.path
            built.max_abs_diff["text"] = text.max_abs_diff
        meta = {"image_onnx": str(built.image_onnx), "text_onnx": str(built.text_onnx) if built.text_onnx else None,
                "preprocess": asdict(pre), "dim": built.dim, "max_abs_diff": built.max_abs_diff,
                "spec": asdict(spec), "pretrained": pretrained}
        meta_path.write_text(json.dumps(meta, indent=2))
    return built


def tokenize(texts: list[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """CLIP's BPE tokens (N, 77) int64, with open_clip's tokenizer (needs open_clip, no torch model)."""
    try:
        from open_clip.tokenizer import SimpleTokenizer
    except ImportError as exc:
        raise LookalikeError("CLIP text search needs open_clip: `pip install open_clip_torch`") from exc
    return np.asarray(SimpleTokenizer(context_length=context_length)(texts).numpy(), dtype=np.int64)


class OnnxTorchEmbedder(Embedder):
    """An exported torch model: `prepare` per the model's config, ONNX Runtime for image (and text) towers."""

    def __init__(self, spec: Spec, cache_dir: Path, *, threads: int = 0, pretrained: bool = True) -> None:
        self.spec = spec
        self.cache_dir = cache_dir
        self.threads = threads
        self.built = build(spec, cache_dir, pretrained=pretrained)
        self._image: Any = None
        self._text: Any = None
        self.card = card(spec, dim=self.built.dim, present=True)

    @property
    def draft_size(self) -> int | None:
        return int(self.built.preprocess.size / self.built.preprocess.crop_pct)

    def prepare(self, image: Image.Image) -> np.ndarray:
        return self.built.preprocess(image)

    def embed_prepared(self, batch: list[np.ndarray]) -> np.ndarray:
        if not batch:
            return np.zeros((0, self.dim), np.float32)
        if self._image is None:
            self._image = make_session(self.built.image_onnx, threads=self.threads, cache_dir=self.cache_dir)
        (out,) = self._image.run(["embedding"], {"image": np.ascontiguousarray(np.stack(batch), np.float32)})
        return l2_normalise(out)

    def embed_text(self, texts: list[str]) -> np.ndarray:
        if self.built.text_onnx is None:
            return super().embed_text(texts)
        if self._text is None:
            self._text = make_session(self.built.text_onnx, threads=self.threads, cache_dir=self.cache_dir)
        (out,) = self._text.run(["embedding"], {"tokens": tokenize(list(texts))})
        return l2_normalise(out)


def _file_stem(name: str) -> str:
    """A model name as a file name: `open_clip:ViT-B-16/laion2b@/x.bin` has characters paths can't hold."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    return safe if safe == name else f"{safe[:80]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def make_embedder(spec: Spec, cache_dir: Path, *, threads: int = 0) -> OnnxTorchEmbedder:
    return OnnxTorchEmbedder(spec, cache_dir, threads=threads)


def _exported(spec: Spec) -> bool:
    from ..config import library_home

    try:
        return (library_home(None) / "models" / f"{_file_stem(spec.name)}-v{GRAPH_VERSION}.json").is_file()
    except Exception:  # noqa: BLE001 - a listing must not fail on an odd home
        return False


def card(spec: Spec, *, dim: int | None = None, present: bool | None = None) -> ModelCard:
    return ModelCard(
        name=spec.name,
        dim=dim or _KNOWN_DIMS.get(spec.name, 0),
        input_size=spec.image_size or 224,
        text=spec.family == "open_clip",
        licence=spec.licence,
        source=(f"open_clip {spec.arch}/{spec.pretrained}" if spec.family == "open_clip" else f"timm {spec.arch}")
        + " (torch extra; weights fetched on first use, run as ONNX)",
        description=spec.description,
        available=_exported(spec) if present is None else present,
        extra={"family": spec.family, "arch": spec.arch, "pretrained": spec.pretrained},
    )
