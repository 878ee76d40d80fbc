"""Object-aware search (issue 17): --box, --objects, and collections indexed with their regions."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import Library
from lookalike.names import regions_of
from lookalike.objects import BadBox, check_box, parse_box, region_count

from .conftest import FLICKR, cli_env, ukbench_images


def paste(background: Path, source: Path, at: tuple[int, int], side: float = 0.45) -> tuple[Image.Image, list[int]]:
    """The central 60% of a UKBench photo pasted onto a Flickr8k photo (as ../shared/acceptance/make_scenes.py)."""
    bg = Image.open(background).convert("RGB").resize((480, 360))
    im = Image.open(source).convert("RGB")
    w, h = im.size
    obj = im.crop((int(w * 0.2), int(h * 0.2), int(w * 0.8), int(h * 0.8)))
    obj = obj.resize((int(480 * side), int(360 * side)))
    bg.paste(obj, at)
    return bg, [at[0], at[1], at[0] + obj.width, at[1] + obj.height]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A gallery: 3 UKBench objects x 4 views, 2 Flickr8k photos, and 2 scenes with objects 3 and 4 pasted."""
    folder = tmp_path_factory.mktemp("gallery")
    uk = ukbench_images(20)
    for p in uk[:12]:
        shutil.copy(p, folder)
    flickr = sorted(FLICKR.rglob("*.jpg"))
    for p in flickr[:2]:
        shutil.copy(p, folder)
    boxes = {}
    for name, src, bg, at in (("scene_a.jpg", uk[12], flickr[10], (240, 150)),
                              ("scene_b.jpg", uk[16], flickr[11], (0, 0))):
        image, box = paste(bg, src, at, side=0.5)
        image.save(folder / name, quality=90)
        boxes[name] = box
    return {"folder": folder, "boxes": boxes, "sources": {"scene_a.jpg": uk[12], "scene_b.jpg": uk[16]}}


@pytest.fixture(scope="module")
def regions_library(tmp_path_factory: pytest.TempPathFactory, model_cache: Path, scenes: dict) -> Library:
    """The gallery indexed twice: plainly ("plain") and with its regions ("reg")."""
    home = tmp_path_factory.mktemp("objects-home")
    (home / "models").symlink_to(model_cache, target_is_directory=True)
    lib = Library.open(home)
    lib.index([scenes["folder"]], "plain")
    lib.index([scenes["folder"]], "reg", regions="objects")
    yield lib
    lib.close()


def test_parse_and_check_box() -> None:
    assert parse_box("120,40,380,300") == (120, 40, 380, 300)
    assert parse_box(" 1.5, 2 ,3,4 ") == (1.5, 2, 3, 4)
    assert parse_box([0, 0, 10, 10]) == (0, 0, 10, 10)
    assert check_box((0, 0, 100, 50), 100, 50) == (0, 0, 100, 50)
    for bad in ("1,2,3", "a,b,c,d", "1;2;3;4", "", "1,2,3,4,5"):
        with pytest.raises(BadBox, match="bad box"):
            parse_box(bad)
    with pytest.raises(BadBox, match="bad box"):
        parse_box([1, 2, float("nan"), 4])
    for box, words in (((-1, 0, 5, 5), "negative"), ((5, 5, 5, 9), "no area"), ((9, 0, 3, 4), "no area"),
                       ((0, 0, 101, 50), "outside the 100x50 picture")):
        with pytest.raises(BadBox, match=words) as err:
            check_box(box, 100, 50)
        assert "\n" not in str(err.value)


@pytest.mark.slow
def test_box_search_returns_the_objects_own_image_first(regions_library: Library, scenes: dict) -> None:
    folder = scenes["folder"]
    for name, box in scenes["boxes"].items():  # the scene's object, against a gallery indexed with regions
        hits = regions_library.search(folder / name, k=3, collection="reg", box=box)
        assert Path(hits[0].path).name == name
        assert hits[0].query_box == box and hits[0].box is not None
    # the central crop of an indexed photo finds its object first in a plain gallery too
    source = ukbench_images(20)[5]
    with Image.open(source) as im:
        w, h = im.size
    hits = regions_library.search(source, k=4, collection="plain", box=(w * 0.2, h * 0.2, w * 0.8, h * 0.8))
    assert all(int(Path(h.path).name[7:12]) // 4 == 1 for h in hits[:3])


@pytest.mark.slow
def test_objects_query_finds_the_pasted_object(regions_library: Library, tmp_path: Path) -> None:
    uk = ukbench_images(12)
    flickr = sorted(FLICKR.rglob("*.jpg"))
    for source, bg, at in ((uk[1], flickr[20], (200, 160)), (uk[6], flickr[21], (10, 150))):
        scene, box = paste(bg, source, at, side=0.4)  # another view of an indexed object, in a busy picture
        hits = regions_library.search(scene, k=4, collection="plain", objects=True)
        assert int(Path(hits[0].path).name[7:12]) // 4 == int(source.name[7:12]) // 4
        assert hits[0].query_box is not None  # found by a region of the query, not the whole


@pytest.mark.slow
def test_region_index_finds_the_scene_and_returns_the_box(regions_library: Library, scenes: dict) -> None:
    store = regions_library.store
    assert region_count(store, "reg") >= 14 * 4  # every image got regions
    assert "reg~regions" not in [c.name for c in regions_library.collections()]
    assert regions_library.count("reg") == 16  # regions are not images
    for name, truth in scenes["boxes"].items():
        source = scenes["sources"][name]  # the photo whose object (its central 60%) was pasted into the scene
        with Image.open(source) as im:
            w, h = im.size
        hits = regions_library.search(source, k=3, collection="reg", box=(w * 0.2, h * 0.2, w * 0.8, h * 0.8))
        assert Path(hits[0].path).name == name
        box = np.array(hits[0].box, float)
        t = np.array(truth, float)
        inter = max(0, min(box[2], t[2]) - max(box[0], t[0])) * max(0, min(box[3], t[3]) - max(box[1], t[1]))
        assert inter / ((box[2] - box[0]) * (box[3] - box[1])) > 0.5  # the box returned is (mostly) the object
        d = hits[0].to_dict()
        assert d["box"] == hits[0].box and d["path"] == hits[0].path and "score" in d


@pytest.mark.slow
def test_removed_or_changed_image_leaves_no_region_behind(regions_library: Library, scenes: dict,
                                                          tmp_path: Path) -> None:
    lib = regions_library
    folder = tmp_path / "few"
    folder.mkdir()
    for p in ukbench_images(3):
        shutil.copy(p, folder)
    lib.index([folder], "few", regions="objects")
    store = lib.store
    rows = lambda: {r.metadata["image"] for r in store.get(regions_of("few"), store.find_ids(regions_of("few")))}  # noqa: E731
    ids = lib.store.find_ids("few")
    assert rows() == set(ids)
    lib.remove([ids[0]], "few")
    assert rows() == set(ids[1:])
    # a changed file: its regions are recomputed (new content hash), no old row survives
    target = folder / ukbench_images(3)[1].name
    old_hash = lib.get_image("few", ids[1]).content_hash
    Image.open(ukbench_images(1, start=30)[0]).save(target)
    lib.index([folder], "few")  # no --regions: the collection keeps its regions in step anyway
    now = store.find_ids("few")
    (changed,) = store.find_ids("few", paths=[str(target)])
    after = store.get(regions_of("few"), store.find_ids(regions_of("few")))
    assert {r.metadata["image"] for r in after} == set(now)
    assert old_hash not in {r.content_hash for r in after}
    fresh = lib.get_image("few", changed).content_hash
    assert {r.content_hash for r in after if r.metadata["image"] == changed} == {fresh}
    # refinement of the collection is untouched by regions: DBA neighbours are images only
    lists = store.neighbour_lists("few", now)
    assert lists and all(n in set(now) for nbrs in lists.values() for n, _ in nbrs), (lists, now)
    lib.drop_collection("few")
    assert "few~regions" not in store.catalogue.collection_names()


@pytest.mark.slow
def test_no_detection_falls_back_to_the_whole_image(regions_library: Library, scenes: dict,
                                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import lookalike.objects as objects

    monkeypatch.setattr(objects, "pick_regions", lambda image, detect, **kw: [])
    query = scenes["folder"] / ukbench_images(1, start=4)[0].name
    plain = regions_library.search(query, k=5, collection="plain")
    found = regions_library.search(query, k=5, collection="plain", objects=True)
    assert [h.id for h in found] == [h.id for h in plain]
    assert all(h.box is None and h.query_box is None for h in found)
    folder = tmp_path / "flat"
    folder.mkdir()
    Image.new("RGB", (64, 48), (90, 90, 90)).save(folder / "flat.png")
    shutil.copy(ukbench_images(1)[0], folder)
    regions_library.index([folder], "flat", regions="objects")
    store = regions_library.store
    marks = store.get(regions_of("flat"), store.find_ids(regions_of("flat")))
    assert len(marks) == 2 and all(r.metadata.get("none") for r in marks)  # one marker per image, no vector
    hits = regions_library.search(folder / "flat.png", k=2, collection="flat")
    assert Path(hits[0].path).name == "flat.png" and hits[0].box is None


@pytest.mark.slow
def test_cli_box_and_objects(regions_library: Library, scenes: dict) -> None:
    env = cli_env(regions_library.home)
    scene = str(scenes["folder"] / "scene_a.jpg")
    lookalike = [sys.executable, "-m", "lookalike.cli"]
    for box, words in (("1,2,3", "bad box"), ("0,0,900,10", "outside the 480x360 picture"),
                       ("-5,0,10,10", "negative"), ("10,10,10,40", "no area")):
        r = subprocess.run([*lookalike, "search", scene, "-c", "plain", "--box", box], env=env,
                           capture_output=True, text=True)
        assert r.returncode == 1 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    import json

    box = ",".join(map(str, scenes["boxes"]["scene_a.jpg"]))
    r = subprocess.run([*lookalike, "search", scene, "-c", "reg", "--box", box, "--json", "-k", "2"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert set(data) == {"collection", "query", "results"}
    assert Path(data["results"][0]["path"]).name == "scene_a.jpg" and "box" in data["results"][0]
