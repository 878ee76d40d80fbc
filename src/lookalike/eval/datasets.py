"""Evaluation sets: images to index plus queries with their relevant images.

Ids are image paths relative to the set's root, so ground truth files stay readable and portable.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..decode import walk_images
from ..errors import LookalikeError


@dataclass
class Query:
    relevant: frozenset[str]
    image: str | None = None  # id of an indexed image, or a path outside the set
    text: str | None = None
    include_self: bool = False  # the query image itself counts as a relevant hit (UKBench N-S)


@dataclass
class EvalSet:
    name: str
    root: Path
    images: list[str]  # ids, relative to root
    queries: list[Query]
    kind: str = "image"  # image | text
    ns_groups: bool = False  # groups of four: report the UKBench N-S score
    notes: dict[str, str] = field(default_factory=dict)

    def path(self, image_id: str) -> Path:
        return self.root / image_id


def _ids(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in walk_images([root])]


def folder_per_class(root: Path, name: str | None = None) -> EvalSet:
    """Every image is a query; relevant = the other images of its folder."""
    images = _ids(root)
    by_class: dict[str, set[str]] = {}
    for image_id in images:
        by_class.setdefault(str(Path(image_id).parent), set()).add(image_id)
    if len(by_class) < 2:
        raise LookalikeError(f"{root} needs one sub-folder per class (found {len(by_class)}); "
                             "or give a ground-truth JSON with --truth")
    queries = [Query(relevant=frozenset(by_class[str(Path(i).parent)] - {i}), image=i) for i in images]
    return EvalSet(name or root.name, root, images, queries)


def ground_truth(root: Path, truth_file: Path, name: str | None = None) -> EvalSet:
    """`{query: [relevant, ...]}`; a query is an image id under root, or a path to an outside image."""
    try:
        truth = json.loads(truth_file.read_text())
    except (OSError, ValueError) as exc:
        raise LookalikeError(f"cannot read ground truth {truth_file}: {exc}") from exc
    if not isinstance(truth, dict):
        raise LookalikeError(f"{truth_file} must hold a JSON object {{query_id: [relevant_ids]}}")
    images = _ids(root)
    known = set(images)
    queries = []
    for query, relevant in truth.items():
        if query not in known and not (root / query).exists() and not Path(query).exists():
            raise LookalikeError(f"query '{query}' in {truth_file} is neither under {root} nor a file")
        missing = [r for r in relevant if r not in known]
        if missing:
            raise LookalikeError(f"relevant image '{missing[0]}' in {truth_file} is not under {root}")
        queries.append(Query(relevant=frozenset(relevant), image=query))
    return EvalSet(name or root.name, root, images, queries)


def ukbench(root: Path) -> EvalSet:
    """UKBench: images 4k..4k+3 show one object; N-S counts the query itself."""
    groups_file = root / "groups.json"
    if groups_file.exists():
        groups = json.loads(groups_file.read_text())
    else:
        groups = {p.name: int(p.stem[-5:]) // 4 for p in root.glob("ukbench*.jpg")}
    images = sorted(groups)
    members: dict[int, set[str]] = {}
    for image_id, g in groups.items():
        members.setdefault(int(g), set()).add(image_id)
    queries = [Query(relevant=frozenset(members[int(groups[i])]), image=i, include_self=True) for i in images]
    return EvalSet("ukbench", root, images, queries, ns_groups=True)


def captions(root: Path, captions_csv: Path, *, every: int = 1) -> EvalSet:
    """Text-to-image: each caption is a query whose one relevant image is the one it describes."""
    image_dir = root / "images" if (root / "images").is_dir() else root
    with captions_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"image", "caption"} <= set(rows[0]):
        raise LookalikeError(f"{captions_csv} needs the columns image,caption")
    images = _ids(image_dir)
    queries = [Query(relevant=frozenset({r["image"]}), text=r["caption"]) for r in rows[::every]]
    return EvalSet(root.name, image_dir, images, queries, kind="text")


def load(spec: str, *, truth: Path | None = None, captions_csv: Path | None = None) -> EvalSet:
    """A set by path: UKBench (groups.json), captions.csv, ground-truth JSON, or folder per class."""
    root = Path(spec).expanduser()
    if not root.is_dir():
        raise LookalikeError(f"evaluation set '{spec}' is not a folder")
    if truth is not None:
        return ground_truth(root, truth)
    if captions_csv is not None or (root / "captions.csv").exists():
        return captions(root, captions_csv or root / "captions.csv")
    if (root / "groups.json").exists():
        return ukbench(root)
    return folder_per_class(root)
