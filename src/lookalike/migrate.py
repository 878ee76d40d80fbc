"""Copy a collection from one store to another (`lookalike migrate`), with no re-embedding.

Rows go over in batches of ids, each with its catalogue fields, plain vector and refinement state
(augmented vector, neighbour list; none for a pending row), written with `Store.import_rows`, which keeps
the ids. Why it resumes after a kill: every batch is one write to the target, and a new run skips the ids
the target already holds, so it carries on where the last one stopped. At the end the counts and a sample
of rows (their vectors compared exactly, float for float) must agree, or the copy is reported as failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from .errors import LookalikeError, ModelMismatch, UnknownCollection
from .names import regions_of
from .store import Store

SAMPLE = 200  # rows compared at the end


@dataclass
class MigrateReport:
    collection: str
    source: str
    target: str
    count: int = 0  # rows in the source collection
    copied: int = 0  # rows this run wrote
    already_there: int = 0  # rows a previous (interrupted) run had copied
    verified: int = 0  # sampled rows whose vectors, augmented vectors and neighbour lists matched exactly
    seconds: float = 0.0
    collections: list[str] | None = None  # the collection and its region companion, if it has one

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def migrate(source: Store, target: Store, collection: str, *, batch: int = 1000, source_name: str = "",
            target_name: str = "", progress: Callable[[int, int], None] | None = None) -> MigrateReport:
    """Copy `collection` (and its ~regions companion) from `source` to `target`; resumable, verified."""
    started = time.monotonic()
    report = MigrateReport(collection, source_name, target_name, collections=[])
    names = [collection]
    try:
        source.collection_settings(regions_of(collection))
        names.append(regions_of(collection))
    except UnknownCollection:
        pass
    for name in names:
        count, copied, there = _copy(source, target, name, max(1, int(batch)), progress)
        report.count += count
        report.copied += copied
        report.already_there += there
        report.verified += _verify(source, target, name)
        report.collections.append(name)  # type: ignore[union-attr]
    target.flush()
    report.seconds = round(time.monotonic() - started, 2)
    return report


def _copy(source: Store, target: Store, name: str, batch: int,
          progress: Callable[[int, int], None] | None) -> tuple[int, int, int]:
    info = source.collection(name)
    try:
        have = target.collection(name)
    except UnknownCollection:
        have = target.create_collection(name, info.model, info.dim, info.metric, info.index_spec, info.settings)
    if (have.model, have.dim, have.metric) != (info.model, info.dim, info.metric):
        raise ModelMismatch(f"the target already has a collection '{name}' of {have.model} ({have.dim}-d), the "
                            f"source's is {info.model} ({info.dim}-d); drop it there or migrate another collection")
    target.set_collection_settings(name, info.settings)
    ids = source.find_ids(name)
    present = set(target.find_ids(name))
    todo = [i for i in ids if i not in present]
    pending = set(source.pending(name))
    copied = 0
    if progress:
        progress(len(ids) - len(todo), len(ids))
    for start in range(0, len(todo), batch):
        chunk = todo[start:start + batch]
        records = source.get(name, chunk)
        by_id = {r.id: r for r in records}
        chunk = [i for i in chunk if i in by_id]  # removed from the source meanwhile
        if not chunk:
            continue
        vectors = source.vectors(name, chunk)
        refined = [i for i in chunk if i not in pending]
        augmented = dict(zip(refined, source.index_vectors(name, refined), strict=True)) if refined else {}
        lists = source.neighbour_lists(name, refined) if refined else {}
        target.import_rows(name, [by_id[i] for i in chunk], vectors, [augmented.get(i) for i in chunk],
                           [lists.get(i, []) for i in chunk])
        copied += len(chunk)
        if progress:
            progress(len(ids) - len(todo) + start + len(chunk), len(ids))
    return len(ids), copied, len(ids) - len(todo)


def _verify(source: Store, target: Store, name: str) -> int:
    """Counts, then SAMPLE rows compared exactly; raises if anything differs."""
    ids = source.find_ids(name)
    theirs = target.count(name)
    if theirs != len(ids):
        raise LookalikeError(f"migrate of '{name}' incomplete: the source has {len(ids)} rows, the target "
                             f"{theirs}; run the same migrate again to finish it")
    if not ids:
        return 0
    sample = sorted(np.random.default_rng(0).choice(ids, min(SAMPLE, len(ids)), replace=False).tolist())
    checks = [
        ("catalogue rows", [r.to_dict() for r in source.get(name, sample)],
         [r.to_dict() for r in target.get(name, sample)]),
        ("neighbour lists", _ordered(source.neighbour_lists(name, sample)),
         _ordered(target.neighbour_lists(name, sample))),
    ]
    for what, a, b in checks:
        if a != b:
            raise LookalikeError(f"migrate of '{name}' differs in {what} after copying; run it again "
                                 "(or drop the target collection and start over)")
    for what, get in (("vectors", "vectors"), ("searchable vectors", "index_vectors")):
        if not np.array_equal(getattr(source, get)(name, sample), getattr(target, get)(name, sample)):
            raise LookalikeError(f"migrate of '{name}': {what} differ after copying; drop the target "
                                 "collection and run migrate again")
    return len(sample)


def _ordered(lists: dict[int, list[tuple[int, float]]]) -> dict[int, list[tuple[int, float]]]:
    """Neighbour lists with ties in a fixed order (stores may return equal cosines either way round)."""
    return {i: sorted(lst, key=lambda p: (-p[1], p[0])) for i, lst in lists.items()}


__all__ = ["MigrateReport", "migrate"]
