"""Allowed roots (issue 20): a symlink inside a root never lets a walk, the library or the CLI read outside it,
and the root list is one setting that the CLI and the server both read."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lookalike import Library
from lookalike.cli import main
from lookalike.config import Settings
from lookalike.decode import walk_images
from lookalike.errors import NotPermitted
from lookalike.server.settings import ServerSettings

from .conftest import ukbench_images


def make_trap(tmp_path: Path) -> tuple[Path, Path]:
    """ROOT/trap holding 2 photos of its own, a link to an outside folder of 3 photos, a link to one outside
    photo, a link to a photo inside the root and a link to a folder inside it (1 photo). Returns (root, outside)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    trap, other = root / "trap", root / "other"
    for folder in (trap, other, outside):
        folder.mkdir(parents=True)
    photos = ukbench_images(7)
    for i, src in enumerate(photos[:2]):
        shutil.copy(src, trap / f"own{i}.jpg")
    for i, src in enumerate(photos[2:5]):
        shutil.copy(src, outside / f"out{i}.jpg")
    shutil.copy(photos[5], outside / "single.jpg")
    shutil.copy(photos[6], other / "inside.jpg")
    (trap / "link_out").symlink_to(outside, target_is_directory=True)
    (trap / "file_out.jpg").symlink_to(outside / "single.jpg")
    (trap / "file_in.jpg").symlink_to(other / "inside.jpg")
    (trap / "dir_in").symlink_to(other, target_is_directory=True)
    return root, outside


def test_walk_follows_links_only_where_they_stay_inside(tmp_path: Path) -> None:
    root, outside = make_trap(tmp_path)
    problems: list[tuple[str, str]] = []
    found = list(walk_images([root / "trap"], lambda p, r, d: problems.append((p.name, r)),
                             within=[root.resolve()]))
    assert sorted(p.name for p in found) == ["file_in.jpg", "inside.jpg", "own0.jpg", "own1.jpg"]
    assert sorted(problems) == [("file_out.jpg", "outside-root"), ("link_out", "outside-root")]
    assert all(outside not in p.resolve().parents for p in found)
    # without roots (a CLI with none configured) links are followed as before
    assert len(list(walk_images([root / "trap"]))) == 9


def test_a_root_that_is_itself_a_link_out_is_refused(tmp_path: Path) -> None:
    root, outside = make_trap(tmp_path)
    problems: list[str] = []
    assert list(walk_images([root / "trap" / "link_out"], lambda p, r, d: problems.append(r),
                            within=[root.resolve()])) == []
    assert problems == ["outside-root"]


def test_library_index_with_roots_skips_links_out(tmp_path: Path, home: Path) -> None:
    root, outside = make_trap(tmp_path)
    with Library.open(home, allowed_roots=[str(root)]) as lib:
        report = lib.index([root / "trap"], "c")
        assert report.added == 4 and report.count == 4
        assert sorted(Path(s.path).name for s in report.skipped if s.reason == "outside-root") == \
            ["file_out.jpg", "link_out"]
        indexed = {Path(r[0]).resolve() for r in lib.store.known_files("c").items()}
        assert not any(outside.resolve() in p.parents for p in indexed)
        with pytest.raises(NotPermitted, match="outside the folders"):
            lib.index([outside], "c")


def test_cli_index_with_configured_roots_refuses_the_escape(tmp_path: Path, home: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    root, outside = make_trap(tmp_path)
    monkeypatch.setenv("LOOKALIKE_ALLOWED_ROOTS", str(root))
    assert main(["index", str(root / "trap"), "-c", "cli", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["added"] == 4 and out["skipped_by_reason"] == {"outside-root": 2}
    assert main(["index", str(outside), "-c", "cli"]) == 1
    assert "outside the folders" in capsys.readouterr().err


def test_the_root_list_is_one_setting_for_the_cli_and_the_server(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (home / "lookalike.toml").write_text('[server]\nallowed_roots = ["/srv/a"]\n')
    assert Settings.load(home).allowed_roots == ["/srv/a"]
    (home / "lookalike.toml").write_text('allowed_roots = ["/srv/top"]\n')
    settings = Settings.load(home)
    assert settings.allowed_roots == ["/srv/top"]
    assert ServerSettings.load(settings).allowed_roots == ["/srv/top"]
    monkeypatch.setenv("LOOKALIKE_ALLOWED_ROOTS", f"/srv/b{os.pathsep}/srv/c")
    settings = Settings.load(home)
    assert settings.allowed_roots == ["/srv/b", "/srv/c"] == ServerSettings.load(settings).allowed_roots


def test_one_index_run_per_collection_across_processes(tmp_path: Path, home: Path) -> None:
    """`index` takes the collection's lock, the one server jobs take: a second run fails at once, clearly."""
    from lookalike.errors import Busy
    from lookalike.jobs_db import CollectionLock

    root, _ = make_trap(tmp_path)
    held = CollectionLock(home / "locks", "c")  # as a server job (or another `lookalike index`) holds it
    assert held.acquire()
    with Library.open(home) as lib:
        with pytest.raises(Busy, match="being indexed by another process"):
            lib.index([root / "other"], "c")
        assert lib.index([root / "other"], "d").added == 1  # other collections are free
        held.release()
        assert lib.index([root / "other"], "c").added == 1
