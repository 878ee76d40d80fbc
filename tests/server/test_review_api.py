"""The HTTP pieces the web page's object overlays and copies review use: /api/regions, the dupes job's
suggested keeper, and keeping one picture of a group (a plan first; the others to the trash on apply)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lookalike import Library
from lookalike.detect import ssd
from lookalike.server import create_app
from lookalike.server.settings import ServerSettings

from ..conftest import FLICKR, SHARED
from .conftest import API_KEY, WRITE, review_app, wait_ready

HAS_SSD = (SHARED / "models" / ssd.TFLITE_NAME).is_file()


@pytest.fixture(scope="module")
def review_setup(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[tuple[TestClient, Path,
                                                                                                 Library]]:
    lib, folder, settings = review_app(tmp_path_factory.mktemp("review"), model_cache)
    with TestClient(create_app(lib, settings=settings)) as c:
        wait_ready(c)
        yield c, folder, lib
    lib.close()


def upload(path: Path) -> dict:
    return {"file": (path.name, io.BytesIO(path.read_bytes()), "image/jpeg")}


def test_regions_of_an_upload_and_of_an_indexed_image(review_setup) -> None:
    client, folder, lib = review_setup
    photo = sorted(FLICKR.rglob("*.jpg"))[1]  # two dogs on a lawn
    width, height = Image.open(photo).size
    r = client.post("/api/regions?collection=review", files=upload(photo))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (width, height)
    assert body["regions"] and all(0 <= x["box"][0] < x["box"][2] <= width and 0 <= x["box"][1] < x["box"][3] <= height
                                   for x in body["regions"])
    if HAS_SSD:
        assert "dog" in {x["label"] for x in body["regions"] if x["source"] == "ssd"}
    # the regions are the ones an objects search searches with: each result's query_box is one of them
    found = client.post("/api/search?collection=review&objects=true&k=5", files=upload(photo)).json()["results"]
    boxes = {tuple(x["box"]) for x in body["regions"]}
    assert all(tuple(h["query_box"]) in boxes for h in found if "query_box" in h)

    record = next(r for r in lib.store.get("review", [1, 2, 3]) if r.path.endswith("ukbench00000.jpg"))
    r = client.post("/api/regions", json={"id": record.id, "collection": "review"})
    assert r.status_code == 200, r.text
    assert (r.json()["width"], r.json()["height"]) == (record.width, record.height)

    assert client.post("/api/regions", json={"collection": "review"}).json()["error"] == "no-query"
    both = client.post("/api/regions?collection=review&id=1", files=upload(photo))
    assert both.status_code == 400 and both.json()["error"] == "ambiguous-query"
    assert client.post("/api/regions", json={"id": 99999, "collection": "review"}).status_code == 404
    assert client.post("/api/regions?collection=review",
                       files={"file": ("x.jpg", io.BytesIO(b"not a picture"), "image/jpeg")}
                       ).status_code == 415


def run_dupes(client: TestClient) -> dict:
    job = client.post("/api/collections/review/dupes").json()
    deadline = time.monotonic() + 120
    while job["state"] == "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        job = client.get(f"/api/dupes/{job['id']}").json()
    assert job["state"] == "done", job
    return job["result"]


def by_name(result: dict) -> dict[frozenset[str], dict]:
    return {frozenset(Path(i["path"]).name for i in g["images"]): g for g in result["groups"]}


def test_keep_plans_first_then_moves_the_copy_to_the_trash(review_setup) -> None:
    client, folder, lib = review_setup
    groups = by_name(run_dupes(client))
    assert set(groups) == {frozenset({"copy_of_0.jpg", "ukbench00000.jpg"}),
                           frozenset({"copy_of_4.jpg", "ukbench00004.jpg"})}  # the other views are left alone
    group = groups[frozenset({"copy_of_0.jpg", "ukbench00000.jpg"})]
    ids = {Path(i["path"]).name: i["id"] for i in group["images"]}
    assert group["keep"] == ids["ukbench00000.jpg"]  # the suggested keeper: more pixels than the copy
    url = "/api/collections/review/dupes/keep"
    body = {"ids": list(ids.values()), "keep": ids["ukbench00000.jpg"]}

    assert client.post(url, json=body).status_code == 401  # a write: the API key
    plan = client.post(url, json=body, headers=WRITE).json()
    assert plan["applied"] is False and [Path(a["path"]).name for a in plan["actions"]] == ["copy_of_0.jpg"]
    assert (folder / "copy_of_0.jpg").is_file()  # a dry run changes nothing

    bad = client.post(url, json={**body, "keep": 99999}, headers=WRITE)
    assert bad.status_code == 400 and "not one of" in bad.json()["message"]
    assert client.post(url, json={"ids": [ids["copy_of_0.jpg"], 99999], "keep": 99999},
                       headers=WRITE).status_code == 404

    done = client.post(url, json={**body, "apply": True}, headers=WRITE).json()
    assert done["applied"] is True and Path(done["manifest"]).is_file()
    assert not (folder / "copy_of_0.jpg").exists() and Path(done["actions"][0]["target"]).is_file()
    assert lib.count("review") == 9  # the copy left the catalogue
    again = run_dupes(client)
    assert set(by_name(again)) == {frozenset({"copy_of_4.jpg", "ukbench00004.jpg"})}


def test_keep_is_applied_only_inside_the_allowed_roots(review_setup, tmp_path: Path) -> None:
    client, folder, lib = review_setup
    group = by_name(run_dupes(client))[frozenset({"copy_of_4.jpg", "ukbench00004.jpg"})]
    body = {"ids": [i["id"] for i in group["images"]], "keep": group["keep"], "apply": True}
    for roots, code in (([], "files-disabled"), ([str(tmp_path)], "outside-allowed-roots")):
        app = create_app(lib, settings=ServerSettings(api_key=API_KEY, allowed_roots=roots))
        with TestClient(app) as other:
            r = other.post("/api/collections/review/dupes/keep", json=body, headers=WRITE)
        assert r.status_code == 403 and r.json()["error"] == code, r.text
    assert (folder / "copy_of_4.jpg").is_file()
