"""Acting on groups of copies, safely: which picture to keep, a plan, a manifest, and undo.

    plan = plan_actions(report.groups, keep="best", mode="move", target="./dupes", library_home=home)
    print(plan.describe())                   # a dry run: nothing changes
    manifest = apply_plan(plan, home)        # does it; every action is written to a manifest first
    undo(manifest, home)                     # puts everything back

Keep policies: `best` (most pixels, then the higher estimated JPEG quality, then the sharper, then the
larger file), `largest` (file size), `oldest` (modification time), `path:PATTERN` (a path matching the
glob PATTERN wins; ties by `best`), `id:N` (the image with id N: a reviewer's choice). Modes: `move`
(to a folder, keeping the names; clashes get a suffix), `delete` (into the library's trash,
`<home>/trash/<run>/`, so undo can restore; empty it when you are sure), `symlink` (the copy moves to a
folder and a symbolic link to the kept picture takes its place, so nothing that refers to the path
breaks). A file whose size or modification time differs from the catalogue, or whose bytes no longer
match its content hash, is skipped with a message; so is a group whose kept picture is missing. A target
folder inside the library home is refused.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import LookalikeError
from ..store import ImageRecord
from .groups import Group

MANIFEST_VERSION = 1
MODES = ("move", "delete", "symlink")


@dataclass
class Action:
    kind: str  # "move" | "delete" | "symlink"
    path: str  # the copy acted on
    keep: str  # the picture kept in its group
    target: str  # where the copy's bytes go (a moved file, or the trash)
    content_hash: str
    image_id: int | None = None
    done: bool = False


@dataclass
class Plan:
    mode: str
    keep_policy: str
    actions: list[Action] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    groups: list[Group] = field(default_factory=list)
    manifest: str | None = None  # set once applied

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "keep": self.keep_policy, "applied": self.manifest is not None,
                "manifest": self.manifest, "actions": [asdict(a) for a in self.actions], "kept": self.kept,
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}

    def describe(self) -> str:
        verb = {"move": "move", "delete": "delete (to the trash)", "symlink": "replace by a link"}[self.mode]
        lines = [f"{'done' if self.manifest else 'would'} {verb}: {a.path} -> {a.target}  (keeps {a.keep})"
                 for a in self.actions]
        lines += [f"skipped {p}: {r}" for p, r in self.skipped]
        if self.manifest is None:
            lines.append(f"dry run: {len(self.actions)} action(s) planned; nothing changed (add --apply)")
        else:
            lines.append(f"{len(self.actions)} action(s) done; manifest {self.manifest} "
                         f"(undo: lookalike dupes --undo {self.manifest})")
        return "\n".join(lines)


# -- which one to keep ---------------------------------------------------------------------------
def jpeg_quality(path: str) -> float:
    """Estimated JPEG quality (0-100) from the luminance quantisation table; 100 for other formats."""
    try:
        with Image.open(path) as im:
            tables = getattr(im, "quantization", None)
            if not tables:
                return 100.0
            q = np.asarray(tables[0], np.float64)
    except OSError:
        return 0.0
    # libjpeg's standard luminance table scaled by quality: mean(q)/mean(std) = S/100
    std_mean = 57.625  # mean of the IJG standard luminance table
    s = 100.0 * float(q.mean()) / std_mean
    quality = (200.0 - s) / 2.0 if s <= 100 else 5000.0 / s
    return float(max(1.0, min(100.0, quality)))


def sharpness(path: str) -> float:
    """Variance of the Laplacian of the grey picture (higher: sharper)."""
    import cv2

    try:
        with Image.open(path) as im:
            im.thumbnail((512, 512))
            grey = np.asarray(im.convert("L"))
    except OSError:
        return 0.0
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def _best_key(r: ImageRecord) -> tuple[float, ...]:
    return (r.width * r.height, jpeg_quality(r.path), sharpness(r.path), r.size)


def keep_key(policy: str) -> Callable[[ImageRecord], tuple[Any, ...]]:
    """A sort key: the record with the largest key is kept. Raises LookalikeError for unknown policies."""
    if policy == "best":
        return _best_key
    if policy == "largest":
        return lambda r: (r.size, r.width * r.height)
    if policy == "oldest":
        return lambda r: (-r.mtime, r.size)
    if policy.startswith("path:") and len(policy) > 5:
        pattern = policy[5:]
        return lambda r: (fnmatch.fnmatch(r.path, pattern) or fnmatch.fnmatch(os.path.basename(r.path), pattern),
                          *_best_key(r))
    if policy.startswith("id:") and policy[3:].isdigit():  # the picture a reviewer chose (the web page)
        chosen = int(policy[3:])
        return lambda r: (r.id == chosen,)
    raise LookalikeError(f"unknown keep policy '{policy}': use best, largest, oldest or path:PATTERN",
                         code="bad-keep")


def choose_keeper(group: Group, policy: str) -> ImageRecord:
    key = keep_key(policy)
    return max(group.images, key=lambda r: (key(r), -(r.id or 0)))


# -- planning ------------------------------------------------------------------------------------
def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def changed_since_indexing(r: ImageRecord) -> str | None:
    """Why a file can't be acted on, or None."""
    p = Path(r.path)
    if not p.is_file() or p.is_symlink():
        return "missing (or a link) since indexing"
    st = p.stat()
    if st.st_size != r.size or (r.mtime and abs(st.st_mtime - r.mtime) > 1e-3):
        return "changed since indexing (re-run `lookalike index` first)"
    return None


def _free_name(folder: Path, name: str, taken: set[str]) -> Path:
    stem, suffix = os.path.splitext(name)
    candidate, n = folder / name, 1
    while candidate.exists() or str(candidate) in taken:
        candidate = folder / f"{stem}-{n}{suffix}"
        n += 1
    taken.add(str(candidate))
    return candidate


def plan_actions(groups: list[Group], *, keep: str = "best", mode: str = "move", target: str | Path | None = None,
                 library_home: str | Path) -> Plan:
    """What acting on `groups` would do (a dry run): one action per copy that isn't kept."""
    if mode not in MODES:
        raise LookalikeError(f"unknown action '{mode}': use move, delete or symlink", code="bad-action")
    home = Path(library_home)
    run = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    if mode == "delete":
        folder = home / "trash" / run
    else:
        if target is None:
            raise LookalikeError(f"--{'move-to' if mode == 'move' else 'symlink'} needs a folder", code="no-target")
        folder = Path(target).expanduser().absolute()
        if _inside(folder, home):
            raise LookalikeError(f"refusing to move files into the library folder ({home}): choose a folder "
                                 "outside it", code="target-in-library")
        if folder.exists() and not folder.is_dir():
            raise LookalikeError(f"{folder} exists and is not a folder", code="bad-target")
    keep_key(keep)  # validates the policy
    plan = Plan(mode=mode, keep_policy=keep, groups=groups)
    taken: set[str] = set()
    for group in groups:
        keeper = choose_keeper(group, keep)
        why = changed_since_indexing(keeper)
        if why:
            plan.skipped.append((keeper.path, f"kept picture {why}; its group is left alone"))
            continue
        plan.kept.append(keeper.path)
        for r in group.images:
            if r is keeper:
                continue
            why = changed_since_indexing(r)
            if why:
                plan.skipped.append((r.path, why))
                continue
            if _inside(Path(r.path), folder):
                plan.skipped.append((r.path, "already in the target folder"))
                continue
            dest = _free_name(folder, os.path.basename(r.path), taken)
            plan.actions.append(Action(mode, r.path, keeper.path, str(dest), r.content_hash, r.id))
    return plan


# -- doing and undoing ---------------------------------------------------------------------------
def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_manifest(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def apply_plan(plan: Plan, library_home: str | Path, *, collection: str = "") -> Path:
    """Carry out `plan`; returns the manifest's path. The manifest (under `<home>/manifests/`) is
    written before anything moves and after every action, so even an interrupted run can be undone.
    A file whose bytes no longer match its content hash is skipped."""
    home = Path(library_home)
    mdir = home / "manifests"
    mdir.mkdir(parents=True, exist_ok=True)
    path = mdir / f"dupes-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
    data = {"version": MANIFEST_VERSION, "library": str(home.resolve()), "collection": collection,
            "created": time.time(), "mode": plan.mode, "keep": plan.keep_policy,
            "actions": [asdict(a) for a in plan.actions]}
    _write_manifest(path, data)
    for i, a in enumerate(plan.actions):
        if a.content_hash and _sha256(a.path) != a.content_hash:
            plan.skipped.append((a.path, "bytes changed since indexing (re-run `lookalike index` first)"))
            continue
        dest = Path(a.target)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            plan.skipped.append((a.path, f"{dest} appeared meanwhile"))
            continue
        shutil.move(a.path, dest)
        if a.kind == "symlink":
            os.symlink(os.path.abspath(a.keep), a.path)
        a.done = True
        data["actions"][i]["done"] = True
        _write_manifest(path, data)
    plan.actions = [a for a in plan.actions if a.done]
    plan.manifest = str(path)
    data["skipped"] = [{"path": p, "reason": r} for p, r in plan.skipped]
    _write_manifest(path, data)
    return path


@dataclass
class UndoReport:
    restored: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    hashes: set[str] = field(default_factory=set)
    collection: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"restored": self.restored, "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
                "collection": self.collection}


def read_manifest(manifest: str | Path, library_home: str | Path) -> dict[str, Any]:
    p = Path(manifest).expanduser()
    try:
        data = json.loads(p.read_text())
        actions = data["actions"]
        library = data["library"]
    except (OSError, ValueError, KeyError, TypeError):
        raise LookalikeError(f"{p} is not a lookalike dupes manifest", code="bad-manifest") from None
    if not isinstance(actions, list) or Path(library).resolve() != Path(library_home).resolve():
        raise LookalikeError(f"{p} was written by another library ({library}); nothing restored",
                             code="foreign-manifest")
    return data


def undo(manifest: str | Path, library_home: str | Path) -> UndoReport:
    """Put back every action a manifest records as done, last first."""
    data = read_manifest(manifest, library_home)
    report = UndoReport(collection=data.get("collection", ""))
    for a in reversed(data["actions"]):
        if not a.get("done"):
            continue
        src, dest = Path(a["target"]), Path(a["path"])
        if not src.exists():
            report.skipped.append((a["path"], f"{src} is gone"))
            continue
        if a["kind"] == "symlink" and dest.is_symlink():
            dest.unlink()
        if dest.exists() or dest.is_symlink():
            report.skipped.append((a["path"], "a file is in its place again; left alone"))
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, dest)
        a["done"] = False
        report.restored.append(a["path"])
        report.hashes.add(a.get("content_hash", ""))
    data["undone"] = time.time()
    _write_manifest(Path(manifest).expanduser(), data)
    return report
