"""What a training run learns from: labelled (or unlabelled) pictures of a collection, and its split.

Labels come from a CSV (`image,label`; a header row is optional) or a folder with one sub-folder per
class. A CSV path is absolute or relative to the folder that was indexed (it is matched against the
end of the catalogued paths: `roses/1.jpg` names `/photos/flowers/roses/1.jpg`); a folder's files are
matched by path, else by content (SHA-256), so a copy of the pictures works too. A CSV may name only
some of the collection's pictures. No torch here.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..decode import IMAGE_EXTENSIONS
from ..errors import LookalikeError, NotFound

MIN_IMAGES = 10  # pictures a run needs at least (labelled ones for supervised training)
MIN_PER_CLASS = 2  # each class needs at least this many (one to query with, one to find)
MIN_UNLABELLED = 20
VALIDATION_FRACTION = 0.15
SPLIT_SEED = 0


class TrainingDataError(LookalikeError):
    code = "bad-training-data"


@dataclass(frozen=True)
class Item:
    image_id: int
    path: str
    content_hash: str
    label: str | None = None


def _csv_rows(path: Path) -> list[tuple[int, str, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise NotFound(f"can't read labels file {path}: {e.strerror or e}") from e
    rows = []
    for n, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if n == 1 and [c.strip().lower() for c in row[:2]] in (["image", "label"], ["path", "label"],
                                                               ["file", "label"], ["filename", "label"]):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise TrainingDataError(f"{path.name} line {n}: expected 'image,label', got {','.join(row)!r}")
        rows.append((n, row[0].strip(), row[1].strip()))
    return rows


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def labelled_items(source: Path, catalogue: list[Item], collection: str) -> list[Item]:
    """The collection's pictures that `source` (CSV or class folders) labels, each with its label."""
    source = Path(os.path.expanduser(source))
    if not source.exists():
        raise NotFound(f"labels {source} not found: give a CSV (image,label) or a folder with one sub-folder per class")
    by_path = {item.path: item for item in catalogue}
    by_name: dict[str, list[Item]] = defaultdict(list)
    for item in catalogue:
        by_name[os.path.basename(item.path)].append(item)
    found: dict[int, Item] = {}

    def add(item: Item, label: str, where: str) -> None:
        old = found.get(item.image_id)
        if old is not None and old.label != label:
            raise TrainingDataError(f"{where}: {item.path} is labelled both '{old.label}' and '{label}'")
        found[item.image_id] = Item(item.image_id, item.path, item.content_hash, label)

    if source.is_dir():
        by_hash = {item.content_hash: item for item in catalogue}
        classes = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
        for cls in classes:
            for f in sorted(cls.rglob("*")):
                if not f.is_file() or f.suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                item = by_path.get(os.path.abspath(f)) or by_hash.get(_sha256(f) or "")
                if item is None:
                    raise TrainingDataError(f"{f} (class {cls.name}) is not indexed in collection '{collection}': "
                                            f"run `lookalike index {source} -c {collection}` first")
                add(item, cls.name, str(cls))
        if not classes:
            raise TrainingDataError(f"{source} has no class sub-folders: put each class's pictures in "
                                    "<folder>/<class>/, or give a CSV (image,label)")
        return list(found.values())

    for line, raw, label in _csv_rows(source):
        where = f"{source.name} line {line}"
        name = os.path.expanduser(raw)
        if os.path.isabs(name):
            item = by_path.get(os.path.abspath(name))
            exists = os.path.exists(name)
        else:
            rel = os.path.normpath(name)
            tail = os.sep + rel
            matches = [i for i in by_name.get(os.path.basename(rel), []) if i.path.endswith(tail) or i.path == rel]
            if len(matches) > 1:
                raise TrainingDataError(f"{where}: '{raw}' matches {len(matches)} indexed files "
                                        f"({matches[0].path}, {matches[1].path}); give more of its path")
            item = matches[0] if matches else None
            exists = (source.parent / rel).exists() or os.path.exists(rel)
        if item is None:
            if exists or os.path.isabs(name):
                what = "is not indexed in" if exists else "does not exist and is not in"
            else:
                what = "is not in"
            raise TrainingDataError(f"{where}: '{raw}' {what} collection '{collection}' (paths are absolute or "
                                    f"relative to the indexed folder; index it with `lookalike index FOLDER -c "
                                    f"{collection}`)")
        add(item, label, where)
    return list(found.values())


def check_supervised(items: list[Item]) -> None:
    classes: dict[str, int] = defaultdict(int)
    for item in items:
        classes[item.label or ""] += 1
    if len(items) < MIN_IMAGES:
        raise TrainingDataError(f"only {len(items)} labelled pictures: supervised training needs at least {MIN_IMAGES}")
    if len(classes) < 2:
        raise TrainingDataError(f"only one class ({next(iter(classes))!r}): supervised training needs at least 2 "
                                "classes (or use --self-supervised)")
    small = sorted(c for c, n in classes.items() if n < MIN_PER_CLASS)
    if small:
        raise TrainingDataError(f"class {small[0]!r} has fewer than {MIN_PER_CLASS} pictures; label more or drop it")


def check_unlabelled(items: list[Item]) -> None:
    if len(items) < MIN_UNLABELLED:
        raise TrainingDataError(f"only {len(items)} pictures: self-supervised training needs at least "
                                f"{MIN_UNLABELLED} (index more into the collection)")


def split(items: list[Item], *, fraction: float = VALIDATION_FRACTION, seed: int = SPLIT_SEED
          ) -> tuple[list[Item], list[Item]]:
    """(train, validation), fixed by the seed and the pictures' content hashes, chosen before training.

    Labelled: stratified, per class round(fraction * n) pictures (none from a class of fewer than 4).
    Unlabelled: `fraction` of all pictures (at least 8)."""
    ordered = sorted(items, key=lambda i: (i.content_hash, i.image_id))
    rng = random.Random(seed)
    rng.shuffle(ordered)
    held: set[int] = set()
    if any(i.label is not None for i in ordered):
        per_class: dict[str, list[Item]] = defaultdict(list)
        for item in ordered:
            per_class[item.label or ""].append(item)
        for members in per_class.values():
            n = round(fraction * len(members)) if len(members) >= 4 else 0
            held.update(i.image_id for i in members[:max(n, 1 if len(members) >= 4 else 0)])
    else:
        n = max(8, round(fraction * len(ordered)))
        held.update(i.image_id for i in ordered[:n])
    train = [i for i in items if i.image_id not in held]
    validation = [i for i in items if i.image_id in held]
    return train, validation
