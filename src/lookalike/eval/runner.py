"""Run an evaluation set through the real index + search path for one or more models.

Each (set, model) pair is indexed into its own collection of an evaluation library (default:
`<library>/eval`), so a re-run only embeds what changed and is fast.
"""

from __future__ import annotations

import hashlib
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..embed import resolve
from ..library import Library
from . import metrics as m
from .datasets import EvalSet

DEFAULT_KS = (1, 5, 10, 20)


@dataclass
class QueryResult:
    query: str
    relevant: list[str]
    ranked: list[str]
    scores: list[float]
    ap: float | None


@dataclass
class ModelResult:
    model: str
    metrics: dict[str, float | None]
    recall_curve: list[float | None]
    latency_ms: dict[str, float]
    index_seconds: float
    queries: list[QueryResult] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"model": self.model, "metrics": self.metrics, "latency_ms": self.latency_ms,
                "index_seconds": round(self.index_seconds, 2)}


def collection_name(eval_set: EvalSet, model: str) -> str:
    """One collection per (set, model variant); long names keep a hash so variants never collide."""
    digest = hashlib.sha1(str(eval_set.root.resolve()).encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9_-]", "_", f"{eval_set.name}-{digest}-{model}")
    if len(name) <= 64:
        return name
    return f"{name[:55]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


PLAIN = ":plain"  # model suffix: the same model with refinement (DBA + query expansion) off


def evaluate(lib: Library, eval_set: EvalSet, model: str, *, ks: tuple[int, ...] = DEFAULT_KS,
             limit: int | None = None) -> ModelResult:
    """Index the set with `model` and score every query; `model:plain` measures plain cosine search."""
    plain = model.endswith(PLAIN)
    model = resolve(model[: -len(PLAIN)] if plain else model, lib.model_dir, fetch=True)
    variant = model + (PLAIN if plain else "")
    collection = collection_name(eval_set, model + ("-plain" if plain else ""))
    if plain and collection not in {c.name for c in lib.collections()}:
        lib.create_collection(collection, model, refine=False)
    started = time.perf_counter()
    report = lib.index([eval_set.path(i) for i in eval_set.images], collection, model=model, prune=False)
    index_seconds = time.perf_counter() - started if report.embedded else 0.0
    rows = lib.store.get(collection, lib.store.find_ids(collection))
    root = str(eval_set.root.resolve())
    id_of = {row.path: row.id for row in rows}
    name_of = {row.id: str(Path(row.path).relative_to(root)) if row.path.startswith(root) else row.path
               for row in rows}
    depth = max(max(ks), 100 if eval_set.kind == "image" else max(ks))
    queries = eval_set.queries[:limit] if limit else eval_set.queries
    embedder = lib.collection_embedder(collection)
    latencies: list[float] = []
    results: list[QueryResult] = []
    for query in queries:
        own_id: int | None = None
        if query.text is not None:
            vector = embedder.embed_text([query.text])[0]
            label = query.text
        else:
            assert query.image is not None
            own_id = id_of.get(str(eval_set.path(query.image).resolve()))
            if own_id is not None:
                vector = lib.store.vectors(collection, [own_id])[0]
            else:
                vector = lib.query_vector(Path(query.image) if Path(query.image).exists()
                                          else eval_set.path(query.image), collection=collection)
            label = query.image
        t0 = time.perf_counter()
        hits = lib.search_vector(vector, k=depth + 1, collection=collection)
        latencies.append((time.perf_counter() - t0) * 1000)
        if own_id is not None and not query.include_self:
            hits = [h for h in hits if h.id != own_id]
        hits = hits[:depth]
        ranked = [name_of.get(h.id, h.path) for h in hits]
        relevant = set(query.relevant)
        results.append(QueryResult(label, sorted(relevant), ranked, [round(h.score, 5) for h in hits],
                                   m.average_precision(ranked, relevant, max(ks))))
    metric_values: dict[str, float | None] = {}
    for k in ks:
        metric_values[f"recall@{k}"] = m.mean([m.recall_at_k(r.ranked, set(r.relevant), k) for r in results])
        metric_values[f"hit@{k}"] = m.mean([m.hit_rate_at_k(r.ranked, set(r.relevant), k) for r in results])
        metric_values[f"precision@{k}"] = m.mean([m.precision_at_k(r.ranked, set(r.relevant), k)
                                                  for r in results])
        metric_values[f"mAP@{k}"] = m.mean([m.average_precision(r.ranked, set(r.relevant), k) for r in results])
        metric_values[f"nDCG@{k}"] = m.mean([m.ndcg_at_k(r.ranked, set(r.relevant), k) for r in results])
    metric_values["mAP"] = m.mean([m.average_precision(r.ranked, set(r.relevant)) for r in results])
    metric_values["MRR"] = m.mean([m.reciprocal_rank(r.ranked, set(r.relevant)) for r in results])
    if eval_set.ns_groups:
        metric_values["N-S"] = m.mean([m.ns_score(r.ranked, set(r.relevant)) for r in results])
    curve = [m.mean([m.recall_at_k(r.ranked, set(r.relevant), k) for r in results])
             for k in range(1, max(ks) + 1)]
    lat = np.asarray(latencies) if latencies else np.zeros(1)
    latency = {"p50": round(float(np.percentile(lat, 50)), 3), "p99": round(float(np.percentile(lat, 99)), 3),
               "mean": round(float(statistics.fmean(lat)), 3)}
    return ModelResult(variant, {k: (round(v, 5) if v is not None else None) for k, v in metric_values.items()},
                       curve, latency, index_seconds, results)


def open_eval_library(home: Path | None, model_dir: Path) -> Library:
    """The evaluation library: its own catalogue, the user's model cache."""
    return Library(home, model_dir=model_dir)
