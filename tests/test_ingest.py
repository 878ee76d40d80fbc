"""Indexing real folders: broken files are skipped and reported, re-runs are incremental, kills resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from lookalike import Library
from lookalike.errors import ModelMismatch
from lookalike.library import Upload

from .conftest import cli_env, ukbench_images


def _bomb() -> bytes:
    side = 20000
    raw = zlib.compress(b"".join(b"\0" + b"\0" * side for _ in range(side)), 9)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.fixture
def broken_folder(tmp_path: Path) -> tuple[Path, int, set[str]]:
    """8 good photos plus one of every kind of bad file; returns (folder, good count, bad reasons)."""
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    good = ukbench_images(8)
    for p in good:
        shutil.copy(p, folder / "sub" if p.stem.endswith(("1", "3")) else folder)
    data = ukbench_images(1, start=20)[0].read_bytes()
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(data[:1500])
    (folder / "text.png").write_text("not an image, just text")
    (folder / "bomb.png").write_bytes(_bomb())
    (folder / "garbage.webp").write_bytes(os.urandom(4096))
    locked = folder / "locked.jpg"
    shutil.copy(ukbench_images(1, start=30)[0], locked)
    locked.chmod(0)
    os.symlink("..", folder / "sub" / "loop")
    os.symlink(folder / "missing-target.jpg", folder / "dangling.jpg")
    readable = os.access(locked, os.R_OK)  # root can read mode-0 files
    reasons = {"empty", "not-an-image", "too-large", "symlink-loop", "unreadable"}
    return folder, 8 + readable, reasons


def test_broken_files_are_skipped_counted_and_reported(home: Path, broken_folder: tuple[Path, int, set[str]]
                                                       ) -> None:
    folder, good, reasons = broken_folder
    lib = Library.open(home)
    report = lib.index([folder], "mixed")
    assert report.count == good == report.added
    got = {s.reason for s in report.skipped}
    assert reasons <= got
    assert got & {"truncated", "corrupt"}
    saved = json.loads(Path(report.report_path).read_text())
    assert {s["path"] for s in saved["skipped"]} >= {str(folder / "zero.jpg"), str(folder / "bomb.png")}
    assert saved["count"] == good
    # the good images are searchable
    hits = lib.search(ukbench_images(1)[0], k=1, collection="mixed")
    assert Path(hits[0].path).name == "ukbench00000.jpg"


def test_reindex_is_incremental_and_prunes(home: Path, small_folder: Path) -> None:
    lib = Library.open(home)
    first = lib.index([small_folder], "inc")
    assert (first.added, first.count) == (12, 12)
    again = lib.index([small_folder], "inc")
    assert (again.added, again.updated, again.unchanged) == (0, 0, 12)
    # change one file's content, touch another without changing it, delete a third
    changed = small_folder / "ukbench00001.jpg"
    old_id = lib.store.find_ids("inc", paths=[str(changed)])[0]
    shutil.copy(ukbench_images(1, start=100)[0], changed)
    touched = small_folder / "ukbench00002.jpg"
    os.utime(touched, (time.time() + 10, time.time() + 10))
    (small_folder / "ukbench00003.jpg").unlink()
    third = lib.index([small_folder], "inc")
    assert (third.added, third.updated, third.removed) == (0, 1, 0)
    assert third.unchanged == 10  # 9 untouched + 1 touched with identical bytes
    assert lib.store.find_ids("inc", paths=[str(changed)]) == [old_id]  # id kept for a changed file
    hit = lib.search(ukbench_images(1, start=100)[0], k=1, collection="inc")[0]
    assert hit.id == old_id  # the new content is what is indexed now
    assert lib.index([small_folder], "inc", prune=True).removed == 1
    assert lib.info("inc").count == 11


def test_collection_refuses_a_second_model(home: Path, small_folder: Path) -> None:
    lib = Library.open(home)
    lib.index([small_folder], "one", model="efficientnet-lite0")
    with pytest.raises(ModelMismatch, match="holds efficientnet-lite0 vectors"):
        lib.index([small_folder], "one", model="efficientnet-lite2")


def _count(home: Path, collection: str) -> int:
    out = subprocess.run([sys.executable, "-m", "lookalike.cli", "info", "--collection", collection, "--json"],
                         capture_output=True, text=True, env=cli_env(home), timeout=120)
    return json.loads(out.stdout)["count"] if out.returncode == 0 else -1


def kill_once_committed(proc: subprocess.Popen, home: Path, total: int, errors: Path, wait: float,
                        collection: str = "many") -> None:
    """SIGKILL an index run as soon as some but not all of its `total` files are committed."""
    deadline = time.time() + wait
    while proc.poll() is None and time.time() < deadline:
        if 0 < _count(home, collection) < total:
            break
        time.sleep(0.2)
    assert proc.poll() is None, f"index finished (rc {proc.poll()}) before it could be killed: {errors.read_text()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < _count(home, collection) < total


@pytest.mark.slow
def test_killed_run_resumes_without_loss_or_duplicates(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    files = ukbench_images(200, start=200)
    for p in files:
        shutil.copy(p, folder)
    env = {**cli_env(home), "LOOKALIKE_COMMIT_EVERY": "16", "LOOKALIKE_BATCH_SIZE": "16"}
    errors = tmp_path / "index-stderr.txt"
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "index", str(folder), "-c", "many"],
                            env=env, stdout=subprocess.DEVNULL, stderr=errors.open("w"))
    kill_once_committed(proc, home, len(files), errors, wait=300)
    done = subprocess.run([sys.executable, "-m", "lookalike.cli", "index", str(folder), "-c", "many", "--json"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_resumed(home, folder, files, done.stdout)


def assert_resumed(home: Path, folder: Path, files: list[Path], output: str, collection: str = "many") -> None:
    """After a killed run and its rerun (`output`: the rerun's --json): every file once, nothing lost."""
    report = json.loads(output)
    assert report["count"] == len(files)
    assert report["unchanged"] + report["added"] == len(files) and report["unchanged"] > 0
    lib = Library.open(home)
    paths = [r.path for r in lib.store.get(collection, lib.store.find_ids(collection))]
    assert sorted(paths) == sorted(str(folder / p.name) for p in files)
    # catalogue and vector index agree: every image finds itself first
    ids, vecs = lib.store.all_vectors(collection)
    _, found = lib.store.search(collection, vecs, 1)
    assert (found[:, 0] == ids).all()


def test_catalogue_records_the_files_own_size(home: Path, tmp_path: Path) -> None:
    """A big photo is decoded reduced for the model; its row still says how big the file is (keep-best needs it)."""
    folder = tmp_path / "big"
    folder.mkdir()
    Image.open(ukbench_images(1)[0]).resize((4000, 3000)).save(folder / "big.jpg", quality=90)
    lib = Library.open(home)
    lib.index([folder], "big")
    (row,) = lib.store.get("big", lib.store.find_ids("big"))
    assert (row.width, row.height) == (4000, 3000)
    (added,) = lib.add_images([Upload((folder / "big.jpg").read_bytes(), "again.jpg")], "big")
    assert (added.width, added.height) == (4000, 3000)
