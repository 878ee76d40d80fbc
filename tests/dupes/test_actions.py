"""actions.py: keep policies, dry run, manifest, undo, and the refusals that keep files safe."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from lookalike.dupes import apply_plan, choose_keeper, find_groups, plan_actions, undo
from lookalike.dupes.actions import jpeg_quality
from lookalike.dupes.groups import Group
from lookalike.errors import LookalikeError
from lookalike.store import ImageRecord

from .conftest import load


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def report(fake_store):
    return find_groups(fake_store, "c", load)


def test_keep_policies(tmp_path: Path, copies) -> None:
    copy, original = copies["scale"]
    rec = [ImageRecord(path=str(original), size=1000, mtime=200.0, width=320, height=240, id=1),
           ImageRecord(path=str(copy), size=5000, mtime=100.0, width=128, height=120, id=2)]
    g = Group(rec, [])
    assert choose_keeper(g, "best").id == 1  # more pixels
    assert choose_keeper(g, "largest").id == 2  # bigger file
    assert choose_keeper(g, "oldest").id == 2
    assert choose_keeper(g, "path:*copy_*").id == 2
    assert choose_keeper(g, "id:2").id == 2 and choose_keeper(g, "id:1").id == 1  # a reviewer's choice
    for bad in ("prettiest", "id:", "id:two"):
        with pytest.raises(LookalikeError):
            choose_keeper(g, bad)


def test_jpeg_quality_estimate(tmp_path: Path, copies) -> None:
    from PIL import Image

    im = Image.open(copies["crop"][1]).convert("RGB")
    for q in (30, 60, 90):
        im.save(tmp_path / f"q{q}.jpg", quality=q)
    est = [jpeg_quality(str(tmp_path / f"q{q}.jpg")) for q in (30, 60, 90)]
    assert est == sorted(est) and abs(est[1] - 60) < 8


def test_dry_run_changes_nothing(report, photo_folder: Path, tmp_path: Path) -> None:
    before = snapshot(photo_folder)
    plan = plan_actions(report.groups, keep="best", mode="move", target=tmp_path / "dupes",
                        library_home=tmp_path / "home")
    assert plan.actions and plan.manifest is None
    assert "dry run" in plan.describe()
    plan_actions(report.groups, mode="delete", library_home=tmp_path / "home")
    assert snapshot(photo_folder) == before and not (tmp_path / "dupes").exists()


@pytest.mark.parametrize("mode", ["move", "delete", "symlink"])
def test_apply_writes_a_manifest_and_undo_restores(report, photo_folder: Path, tmp_path: Path, mode: str) -> None:
    before = snapshot(photo_folder)
    home = tmp_path / "home"
    plan = plan_actions(report.groups, keep="best", mode=mode, target=None if mode == "delete" else tmp_path / "dupes",
                        library_home=home)
    n = len(plan.actions)
    manifest = apply_plan(plan, home, collection="c")
    data = json.loads(manifest.read_text())
    assert len(data["actions"]) == n and all(a["done"] for a in data["actions"])
    for a in plan.actions:
        assert Path(a.target).is_file()
        if mode == "symlink":
            assert Path(a.path).is_symlink() and Path(a.path).resolve() == Path(a.keep).resolve()
        else:
            assert not os.path.lexists(a.path)
        assert Path(a.keep).is_file()
    if mode == "delete":
        assert all(Path(a.target).is_relative_to(home / "trash") for a in plan.actions)
    result = undo(manifest, home)
    assert len(result.restored) == n
    assert snapshot(photo_folder) == before


def test_changed_file_is_skipped_with_a_message(report, tmp_path: Path) -> None:
    plan0 = plan_actions(report.groups, mode="move", target=tmp_path / "d", library_home=tmp_path / "home")
    victim = Path(plan0.actions[0].path)
    victim.write_bytes(victim.read_bytes() + b"\0")
    os.utime(victim, (time.time() + 5, time.time() + 5))
    plan = plan_actions(report.groups, mode="move", target=tmp_path / "d", library_home=tmp_path / "home")
    assert any(p == str(victim) and "changed since indexing" in why for p, why in plan.skipped)
    assert str(victim) not in [a.path for a in plan.actions]


def test_target_inside_the_library_is_refused(report, tmp_path: Path) -> None:
    home = tmp_path / "home"
    with pytest.raises(LookalikeError, match="library folder"):
        plan_actions(report.groups, mode="move", target=home / "dupes", library_home=home)


def test_manifest_from_another_library_is_refused(report, photo_folder: Path, tmp_path: Path) -> None:
    plan = plan_actions(report.groups, mode="move", target=tmp_path / "d", library_home=tmp_path / "home")
    manifest = apply_plan(plan, tmp_path / "home")
    moved = snapshot(tmp_path / "d")
    with pytest.raises(LookalikeError, match="another library"):
        undo(manifest, tmp_path / "other-home")
    with pytest.raises(LookalikeError, match="not a lookalike dupes manifest"):
        undo(photo_folder / "exact_copy_of_5.jpg", tmp_path / "home")
    assert snapshot(tmp_path / "d") == moved  # nothing restored
