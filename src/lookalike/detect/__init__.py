"""Object detectors and class-agnostic region proposals for object-aware search (issue 17)."""

from __future__ import annotations

from .base import DEFAULT_DETECTOR, Box, Detector, Region, detector_names, get_detector, iou, nms, register


def _register_builtin() -> None:
    from .proposals import ProposalDetector
    from .ssd import SsdDetector

    register("ssd", lambda cache, threads: SsdDetector(cache, threads=threads))
    register("proposals", lambda cache, threads: ProposalDetector())


_register_builtin()

__all__ = ["DEFAULT_DETECTOR", "Box", "Detector", "Region", "detector_names", "get_detector", "iou", "nms",
           "register"]
