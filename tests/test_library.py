"""The Python API on its own: every operation the CLI and the service expose, called on `Library` directly."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from lookalike import Library
from lookalike.config import Settings
from lookalike.errors import (
    DecodeError,
    EmptyLibrary,
    LookalikeError,
    NotFound,
    NotPermitted,
    UnknownCollection,
    UnknownImage,
)
from lookalike.library import Limits, Upload

from .conftest import cli_env, copy_photos, ukbench_images


def smaller(data: bytes, side: int = 320, quality: int = 70) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[Library]:
    """12 UKBench photos (3 objects x 4 views) indexed in collection 'p'."""
    home = tmp_path_factory.mktemp("library-home")
    (home / "models").symlink_to(model_cache, target_is_directory=True)
    photos = copy_photos(tmp_path_factory.mktemp("library-photos") / "photos", 12)
    with Library.open(home) as library:
        library.index([photos], "p")
        yield library


def test_add_images_is_all_or_nothing_and_keeps_the_bytes(lib: Library) -> None:
    good = ukbench_images(1, start=100)[0].read_bytes()
    with pytest.raises(DecodeError) as err:
        lib.add_images([Upload(good, "ok"), Upload(b"not an image", "bad")], "up")
    assert err.value.code == "not-an-image" and err.value.extra["index"] == 1
    assert str(err.value).startswith("upload #2: ") and str(err.value).endswith("nothing was added")
    with pytest.raises(UnknownCollection):  # the failed first write made no collection
        lib.info("up")
    with pytest.raises(LookalikeError) as dup:
        lib.add_images([Upload(good, "x"), Upload(good, "x")], "up")
    assert dup.value.code == "duplicate-id"

    records = lib.add_images([Upload(good, "ok"), Upload(ukbench_images(1, start=101)[0].read_bytes())], "up",
                             tags=["new"], metadata={"source": "test"})
    assert [r.path for r in records][0] == "upload:ok" and lib.count("up") == 2
    stored = lib.get_image("up", lib.store.find_ids("up", paths=["upload:ok"])[0])
    assert stored.tags == ["new"] and stored.metadata == {"source": "test"}
    data, media_type = lib.image_bytes("up", stored.id)
    assert data == good and media_type == "image/jpeg"
    hits = lib.search(good, collection="up", k=1)
    assert hits[0].id == stored.id


def test_limits_refuse_oversized_uploads_before_decoding(lib: Library) -> None:
    data = ukbench_images(1, start=102)[0].read_bytes()
    with pytest.raises(DecodeError) as err:
        lib.add_image(data, "p", limits=Limits(max_bytes=len(data) - 1, max_pixels=10**8))
    assert err.value.code == "too-large"
    with pytest.raises(DecodeError) as err:
        lib.search(data, collection="p", limits=Limits(max_bytes=len(data), max_pixels=1000))
    assert err.value.code == "too-large" and "pixel limit" in str(err.value)


def test_replace_update_and_remove_an_upload(lib: Library) -> None:
    first, second = (p.read_bytes() for p in ukbench_images(2, start=110))
    record = lib.add_image(first, "edit", name="pic", group_id="g", tags=["a"])
    image_id = lib.store.find_ids("edit", paths=[record.path])[0]
    replaced = lib.replace_image("edit", image_id, second, metadata={"v": 2})
    assert replaced.id == image_id and replaced.group_id == "g" and replaced.tags == ["a"]
    assert lib.image_bytes("edit", image_id)[0] == second
    assert not (lib.home / "uploads" / record.content_hash).exists()  # the old bytes went with the old picture
    updated = lib.update_image("edit", image_id, tags=["b", "c"], metadata={"w": 1})
    assert updated.tags == ["b", "c"] and updated.metadata == {"v": 2, "w": 1}
    assert lib.remove([image_id], "edit") == 1
    assert not (lib.home / "uploads" / replaced.content_hash).exists()
    with pytest.raises(UnknownImage):
        lib.get_image("edit", image_id)
    with pytest.raises(EmptyLibrary):
        lib.search(first, collection="edit")
    assert lib.drop_collection("edit") == 0


def test_thumbnail_of_an_indexed_file(lib: Library) -> None:
    image_id = lib.store.find_ids("p")[0]
    thumb, digest = lib.thumbnail("p", image_id, 64)
    picture = Image.open(io.BytesIO(thumb))
    assert picture.format == "JPEG" and max(picture.size) == 64
    assert digest == lib.get_image("p", image_id).content_hash
    with pytest.raises(UnknownImage):
        lib.thumbnail("p", 10**9, 64)


def test_missing_file_is_not_found(lib: Library, tmp_path: Path) -> None:
    photo = tmp_path / "gone.jpg"
    photo.write_bytes(ukbench_images(1, start=120)[0].read_bytes())
    lib.index([photo], "gone")
    photo.unlink()
    with pytest.raises(NotFound) as err:
        lib.image_bytes("gone", lib.store.find_ids("gone")[0])
    assert err.value.code == "gone"
    lib.drop_collection("gone")


def test_compare_gives_score_and_verdict_for_paths_bytes_and_ids(lib: Library) -> None:
    photos = ukbench_images(8)
    original = photos[0].read_bytes()
    copy = lib.compare(photos[0], smaller(original))
    assert copy.verdict == "duplicate" and 0.95 <= copy.score <= 1
    assert lib.compare(photos[0], photos[3]).verdict == "similar"  # another photo of the same object
    assert lib.compare(photos[0], photos[7]).verdict == "different"
    ids = {Path(r.path).name: r.id for r in lib.store.get("p", lib.store.find_ids("p"))}
    by_id = lib.compare(ids[photos[0].name], ids[photos[2].name], collection="p")
    by_bytes = lib.compare(original, photos[2].read_bytes(), collection="p")
    assert by_id.score == pytest.approx(by_bytes.score, abs=1e-4)
    with pytest.raises(LookalikeError, match="^image b: .*needs a collection"):
        lib.compare(original, 3)
    with pytest.raises(DecodeError, match="^image a: "):
        lib.compare(b"hello", original)


def test_cli_compare_is_the_library_compare(lib: Library) -> None:
    a, b = ukbench_images(2)
    expected = lib.compare(a, b).to_dict()
    out = subprocess.run([sys.executable, "-m", "lookalike.cli", "compare", str(a), str(b), "--json"],
                         env=cli_env(lib.home), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["verdict"] == expected["verdict"] and got["score"] == pytest.approx(expected["score"], abs=1e-5)
    bad = subprocess.run([sys.executable, "-m", "lookalike.cli", "compare", str(a), "nope.jpg"],
                         env=cli_env(lib.home), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "nope.jpg" in bad.stderr


def test_impossible_thresholds_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LookalikeError, match="similar_threshold <= duplicate_threshold"):
        Settings.load(tmp_path, duplicate_threshold=0.5, similar_threshold=0.8)
    with pytest.raises(LookalikeError, match="duplicate_threshold='high' is not a valid float"):
        Settings.load(tmp_path, duplicate_threshold="high")


def test_allowed_paths(lib: Library, tmp_path: Path) -> None:
    inside = tmp_path / "root" / "in"
    inside.mkdir(parents=True)
    assert lib.allowed_paths([str(inside)], [tmp_path / "root"]) == [str(inside.resolve())]
    with pytest.raises(NotPermitted) as err:
        lib.allowed_paths([str(inside)], [])
    assert err.value.code == "indexing-disabled"
    with pytest.raises(NotPermitted) as err:
        lib.allowed_paths([str(tmp_path / "root" / "in" / ".." / "..")], [tmp_path / "root"])
    assert err.value.code == "outside-allowed-roots"
    with pytest.raises(NotFound):
        lib.allowed_paths([str(tmp_path / "root" / "missing")], [tmp_path / "root"])
    with pytest.raises(LookalikeError, match="not an absolute path"):
        lib.allowed_paths(["relative/dir"], [tmp_path / "root"])


def test_models_warm_up_and_timings(lib: Library) -> None:
    names = {card.name for card in lib.models()}
    assert lib.default_model in names and lib.has_text(lib.info("p").model)
    assert lib.info("p").model in lib.warm_up()
    timings: dict[str, float] = {}
    hits = lib.search(ukbench_images(1)[0], collection="p", k=4, timings=timings)
    assert len(hits) == 4 and set(timings) == {"decode", "embed", "search"} and all(v > 0 for v in timings.values())
    with pytest.raises(UnknownImage):
        lib.search(10**9, collection="p")


@pytest.mark.parametrize("image_id", [0, -1, 2**53, 2**63, 36893488147419103232])
def test_ids_outside_sqlite_range_are_unknown_images_not_crashes(lib: Library, image_id: int) -> None:
    for call in (lambda: lib.get_image("p", image_id), lambda: lib.image_bytes("p", image_id),
                 lambda: lib.remove([image_id], "p"), lambda: lib.search(image_id, collection="p"),
                 lambda: lib.compare(image_id, 1, collection="p")):
        with pytest.raises(UnknownImage):
            call()
    assert lib.store.get("p", [image_id]) == [] and lib.count("p") == 12


def test_index_batches_take_turns_with_other_writers(tmp_path: Path, model_cache: Path) -> None:
    """An index run writes under the library's write lock, like uploads: while another process (here another
    open file description) holds it, the run waits `write_wait` and then stops with Busy, nothing written."""
    from lookalike.errors import Busy
    from lookalike.write_lock import LibraryWriteLock

    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(model_cache, target_is_directory=True)
    photos = copy_photos(tmp_path / "photos", 4)
    with Library.open(home, settings=Settings.load(home, write_wait=0.5)) as library:
        with LibraryWriteLock(home / "locks", wait=0), pytest.raises(Busy, match="another write"):
            library.index([photos], "turns")
        assert library.count("turns") == 0
        assert library.index([photos], "turns").count == 4  # the lock is free again: the same run goes through
