"""/api/search with `box` and `objects` (issue 17): declared in OpenAPI, boxes returned, bad boxes 400."""

from __future__ import annotations

import io

from fastapi.testclient import TestClient
from PIL import Image

from .conftest import jpeg, names


def upload(data: bytes) -> dict:
    return {"file": ("q.jpg", io.BytesIO(data), "image/jpeg")}


def test_box_and_objects_are_declared(client: TestClient) -> None:
    op = client.get("/openapi.json").json()["paths"]["/api/search"]["post"]
    params = {p["name"]: p["schema"] for p in op["parameters"]}
    assert params["objects"]["type"] == "boolean"
    assert params["box"]["type"] == "string" and params["box"]["pattern"].startswith("^")
    body = op["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"objects", "box"} <= set(body)


def test_box_search_and_bad_boxes(client: TestClient) -> None:
    data = jpeg(8)
    w, h = Image.open(io.BytesIO(data)).size
    box = f"{w // 5},{h // 5},{w * 4 // 5},{h * 4 // 5}"
    r = client.post(f"/api/search?collection=uk&k=3&box={box}", files=upload(data))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["box"] == box and names(body["results"])[0].startswith("ukbench0000")
    assert body["results"][0]["query_box"] == [w // 5, h // 5, w * 4 // 5, h * 4 // 5]
    for bad in ("1,2,3", f"0,0,{w + 10},10", "5,5,5,9", "-1,0,4,4"):
        r = client.post(f"/api/search?collection=uk&box={bad}", files=upload(data))
        assert r.status_code == 400 and r.json()["error"] == "bad-box", (bad, r.text)
    r = client.post("/api/search", json={"text": "a cat", "collection": "uk", "box": [0, 0, 4, 4]})
    assert r.status_code == 400


def test_objects_search_returns_query_boxes(client: TestClient) -> None:
    r = client.post("/api/search?collection=uk&k=4&objects=true", files=upload(jpeg(12)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["objects"] is True and names(body["results"])[0] == "ukbench00012.jpg"
    assert all(isinstance(x.get("query_box", []), list) for x in body["results"])
