"""Measure retrieval quality on labelled images: metrics, set loaders, runner and reports."""

from .datasets import EvalSet, Query, captions, folder_per_class, ground_truth, load, ukbench
from .runner import ModelResult, evaluate

__all__ = ["EvalSet", "ModelResult", "Query", "captions", "evaluate", "folder_per_class", "ground_truth", "load",
           "ukbench"]
