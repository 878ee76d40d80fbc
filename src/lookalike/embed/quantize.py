"""Opt-in int8 EfficientNet-Lite for the CPU (ONNX Runtime quantisation).

Why opt-in: on the project's CPU (AMD EPYC, 2 cores) int8 is not faster; the graph is 4x
smaller on disk and its vectors stay close to fp32 (figures in docs/models.md and `lookalike
models`). Vectors are close but not identical, so an int8 model has its own name
(`efficientnet-lite2-int8`) and a collection never mixes it with fp32 vectors.

Two modes:
  * dynamic (default): weights to int8, activations quantised on the fly; needs no data.
  * static: QDQ with activation ranges calibrated on sample pictures (`calibration` images).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .base import ModelCard
from .efficientnet import EfficientNetLite, onnx_path
from .efficientnet import card as fp32_card
from .runtime import make_session

# Measured with `bench/models.py --threads 2` (all 1000 UKBench / tf_flowers images; docs/models.md).
MEASURED: dict[str, str] = {
    "lite0": "cos 0.89, N-S 3.916 vs 3.929, flowers mAP@10 0.739 vs 0.758, 0.17x speed",
    "lite2": "cos 0.93, N-S 3.893 vs 3.904, flowers mAP@10 0.731 vs 0.740, 0.12x speed",
}
_lock = threading.Lock()


def quantize_onnx(src: Path, dst: Path, *, mode: str = "dynamic", calibration: Iterable[np.ndarray] = (),
                  input_name: str = "image") -> Path:
    """Write an int8 copy of the ONNX graph `src` to `dst`; `calibration` = prepared inputs (static mode)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + f".{os.getpid()}.tmp")
    if mode == "dynamic":
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QUInt8)
    elif mode == "static":
        batches = [{input_name: np.asarray(x, np.float32)[None]} for x in calibration]
        if not batches:
            raise ValueError("static quantisation needs calibration inputs")

        class _Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it = iter(batches)

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self._it, None)

        quantize_static(str(src), str(tmp), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    else:
        raise ValueError(f"unknown quantisation mode '{mode}': dynamic or static")
    tmp.replace(dst)
    return dst


def int8_path(cache_dir: Path, variant: str, size: int, mode: str = "dynamic") -> Path:
    """The cached int8 graph, quantised from the cached fp32 graph on first use (a few seconds)."""
    src = onnx_path(cache_dir, variant, size)
    target = src.with_name(src.stem + f"-int8-{mode}.onnx")
    with _lock:
        if not target.exists():
            quantize_onnx(src, target, mode=mode)
    return target


class EfficientNetLiteInt8(EfficientNetLite):
    """EfficientNet-Lite with a dynamically quantised graph; preprocessing and pooling unchanged."""

    def __init__(self, variant: str, cache_dir: Path, *, threads: int = 0, **kwargs: Any) -> None:
        super().__init__(variant, cache_dir, threads=threads, name=f"efficientnet-{variant}-int8", **kwargs)
        self.card = card(variant, base=self.card)

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = make_session(int8_path(self.cache_dir, self.variant, self.size), threads=self.threads,
                                         device="cpu")
        return self._session


def card(variant: str, base: ModelCard | None = None) -> ModelCard:
    c = base or fp32_card(variant, name=f"efficientnet-{variant}-int8")
    c.name = f"efficientnet-{variant}-int8"
    c.description = f"{c.description}; int8 (ONNX Runtime dynamic quantisation, CPU)"
    c.extra = {**c.extra, "int8": MEASURED.get(variant, "not measured")}
    return c
