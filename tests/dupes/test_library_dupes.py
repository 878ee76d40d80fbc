"""Library.dupes / compare / search(copies=True) and the `lookalike dupes` command, with the default model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lookalike import Library
from lookalike.errors import LookalikeError
from tests.conftest import cli_env


@pytest.fixture(scope="module")
def lib_and_folder(tmp_path_factory: pytest.TempPathFactory, model_cache: Path, originals, copies):
    home = tmp_path_factory.mktemp("dupes-home")
    (home / "models").symlink_to(model_cache, target_is_directory=True)
    folder = tmp_path_factory.mktemp("dupes-photos")
    for p in originals:
        shutil.copy(p, folder)
    for c, _ in copies.values():
        shutil.copy(c, folder)
    shutil.copy(originals[5], folder / "exact_copy_of_5.jpg")
    lib = Library.open(home)
    lib.index([folder], "p")
    yield lib, folder
    lib.close()


def group_names(report) -> list[set[str]]:
    return [{Path(r.path).name for r in g.images} for g in report.groups]


def test_dupes_groups_copies_and_not_other_photos(lib_and_folder, copies, originals) -> None:
    lib, _ = lib_and_folder
    report = lib.dupes("p")
    groups = group_names(report)
    for copy, original in copies.values():
        assert any({copy.name, original.name} <= g for g in groups), (copy.name, groups)
    for g in groups:
        assert len(g & {p.name for p in originals}) <= 1, g


def test_compare_scores_copies_and_keeps_the_cosine(lib_and_folder, copies, originals) -> None:
    lib, _ = lib_and_folder
    copy, original = copies["rot90"]
    c = lib.compare(copy, original)
    d = c.to_dict()
    assert d["verdict"] == "duplicate" and 0.5 <= d["score"] <= 1 and "similarity" in d and d["copy"]["inliers"] > 10
    other = lib.compare(originals[0], originals[2]).to_dict()  # another photo of the same object
    assert other["verdict"] in ("similar", "different") and 0 <= other["score"] < 0.5


def test_search_copies_returns_only_verified_copies(lib_and_folder, copies, originals) -> None:
    lib, _ = lib_and_folder
    copy, original = copies["tilt_border"]
    hits = lib.search(copy, k=10, collection="p", copies=True)
    assert hits and Path(hits[0].path).name in {original.name, copy.name}
    names = {Path(h.path).name for h in hits}
    assert not names & ({p.name for p in originals} - {original.name})
    assert all(0.5 <= h.score <= 1 for h in hits)
    unrelated = lib.search(originals[14], k=10, collection="p", copies=True)
    assert {Path(h.path).name for h in unrelated} <= {originals[14].name}


def test_cli_dupes_plan_apply_undo_and_not_duplicates(lib_and_folder, copies, tmp_path: Path) -> None:
    lib, folder = lib_and_folder
    env = cli_env(lib.home)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lookalike.cli", *args], env=env, capture_output=True,
                              text=True, timeout=600)

    out = run("dupes", "-c", "p", "--json")
    assert out.returncode == 0, out.stderr
    groups = json.loads(out.stdout)["groups"]
    assert groups and all(len(g["images"]) >= 2 and g["evidence"] for g in groups)
    before = sorted(p.name for p in folder.iterdir())
    dry = run("dupes", "-c", "p", "--keep", "best", "--move-to", str(tmp_path / "dupes"))
    assert dry.returncode == 0 and "dry run" in dry.stdout
    assert sorted(p.name for p in folder.iterdir()) == before
    inside = run("dupes", "-c", "p", "--move-to", str(lib.home / "x"), "--apply")
    assert inside.returncode == 1 and inside.stderr.count("\n") == 1 and "library folder" in inside.stderr
    done = run("dupes", "-c", "p", "--move-to", str(tmp_path / "dupes"), "--apply", "--json")
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)["plan"]["manifest"]
    assert len(list(folder.iterdir())) < len(before)
    assert run("dupes", "-c", "p", "--json").returncode == 0
    undone = run("dupes", "--undo", manifest)
    assert undone.returncode == 0, undone.stderr
    assert sorted(p.name for p in folder.iterdir()) == before
    assert lib.count("p") == len(before)  # restored files are indexed again
    copy, original = copies["crop"]
    assert run("dupes", "-c", "p", "--not-duplicates", str(folder / copy.name), str(folder / original.name)
               ).returncode == 0
    again = json.loads(run("dupes", "-c", "p", "--json").stdout)["groups"]
    assert not any({copy.name, original.name} <= {Path(i["path"]).name for i in g["images"]} for g in again)
    bad = run("dupes", "--undo", str(folder / original.name))
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1


def test_not_duplicates_needs_two_different_pictures(lib_and_folder, originals) -> None:
    lib, _ = lib_and_folder
    with pytest.raises(LookalikeError):
        lib.not_duplicates([originals[0]], "p")
    with pytest.raises(LookalikeError):
        lib.not_duplicates([originals[0], originals[0]], "p")


def test_http_dupes_job_and_copies_search(lib_and_folder, copies) -> None:
    import time

    from fastapi.testclient import TestClient

    from lookalike.server.app import create_app

    lib, _ = lib_and_folder
    # a second app over the same library, as another server worker is
    with Library.open(lib.home) as other_lib, TestClient(create_app(lib)) as client, \
            TestClient(create_app(other_lib)) as other:
        started = client.post("/api/collections/p/dupes")
        assert started.status_code == 202
        url = started.json()["url"]
        for _ in range(600):
            job = other.get(url).json()  # the job runs in the first app; the second answers for it
            if job["state"] != "running":
                break
            time.sleep(0.2)
        assert job["state"] == "done", job
        assert job["result"]["groups"] and job["progress"] == 1.0
        assert client.get(url).json() == job
        assert job["result"]["groups"] == json.loads(json.dumps(lib.dupes("p").to_dict(keep="best")))["groups"]
        assert other.get("/api/dupes/0123456789ab").status_code == 404
        assert client.post("/api/collections/nope/dupes").status_code == 404
        copy, original = copies["scale"]
        r = client.post("/api/search?collection=p&copies=true", files={"file": ("q.jpg", copy.read_bytes())})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert results and all(0.5 <= x["score"] <= 1 and "copy" in x for x in results)
        assert Path(results[0]["path"]).name in {original.name, copy.name}


def test_turned_views_are_cached_and_the_180_degree_view_finds_an_upside_down_copy(lib_and_folder, originals,
                                                                                    tmp_path: Path) -> None:
    """`dupes` searches with each picture's 90- and 180-degree views (dupes/cache.py): the original's
    180-degree view lies next to a copy turned upside down, however far the upright vectors are."""
    import numpy as np
    from PIL import Image

    from lookalike.dupes.cache import TurnedVectors

    lib, _ = lib_and_folder
    upside_down = tmp_path / "upside_down.jpg"
    im = Image.open(originals[13]).convert("RGB")
    w, h = im.size
    im.rotate(180).crop((w // 20, h // 20, w - w // 20, h - h // 20)).save(upside_down, quality=70)
    lib.index([originals[13], upside_down], "turned")
    ids = sorted(lib.store.find_ids("turned"))
    by_name = {Path(r.path).name: r for r in lib.store.get("turned", ids)}
    orig, copy = by_name[originals[13].name], by_name["upside_down.jpg"]
    with TurnedVectors(tmp_path / "cache.sqlite") as cache:
        views = lib._turned_views("turned", cache)([orig.id, copy.id])
        assert views.shape[:2] == (2, 2) and np.all(np.abs(np.linalg.norm(views, axis=2) - 1) < 1e-3)
        name = lib.collection_embedder("turned").name
        assert set(cache.get(f"{name}@180", [orig.content_hash, copy.content_hash])) == {orig.content_hash,
                                                                                          copy.content_hash}
    plain = lib.store.vectors("turned", [orig.id, copy.id])
    assert float(views[0, 1] @ plain[1]) > max(float(plain[0] @ plain[1]) + 0.05, 0.85)
