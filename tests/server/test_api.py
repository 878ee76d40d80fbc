"""The HTTP API, endpoint by endpoint, with its error cases and limits (FastAPI TestClient)."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lookalike.decode import sniff

from .conftest import API_KEY, WRITE, jpeg, names


def png(size: tuple[int, int], color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def smaller_jpeg(data: bytes, side: int = 400, quality: int = 85) -> bytes:
    image = Image.open(io.BytesIO(data))
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def upload(data: bytes, name: str = "q.jpg", ctype: str = "image/jpeg") -> dict:
    return {"file": (name, data, ctype)}


# -- operations -------------------------------------------------------------------------------------
def test_healthz_and_readyz_answer_ok(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_page_and_its_assets_are_served_at_root(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<html" in page.text and 'type="file"' in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200


def test_openapi_docs_list_every_endpoint(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for route in ("/api/search", "/api/compare", "/api/collections", "/api/collections/{collection}",
                  "/api/collections/{collection}/images", "/api/collections/{collection}/images/bulk",
                  "/api/collections/{collection}/images/count", "/api/collections/{collection}/images/{image_id}",
                  "/api/collections/{collection}/images/{image_id}/thumbnail",
                  "/api/collections/{collection}/index", "/api/jobs/{job_id}", "/healthz", "/readyz", "/metrics"):
        assert route in paths, route
    search = paths["/api/search"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json", "application/octet-stream"} <= set(search)


def test_metrics_count_requests_latency_index_size_and_queue(client: TestClient) -> None:
    client.get("/healthz")
    client.post("/api/search?collection=uk&k=2", files=upload(jpeg(0)))
    text = client.get("/metrics").text
    assert 'lookalike_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert 'lookalike_http_request_duration_seconds_bucket{le="0.5",method="POST",route="/api/search"}' in text
    assert 'lookalike_search_step_seconds_count{step="embed+nearest"}' in text
    assert 'lookalike_collection_images{collection="uk"} 40.0' in text
    assert "lookalike_collection_bytes" in text and "lookalike_index_queue_depth 0.0" in text


def test_requests_are_logged_as_structured_records(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="lookalike.server"):
        r = client.get("/api/collections", headers={"X-Request-ID": "abc123"})
    assert r.headers["x-request-id"] == "abc123"
    rec = next(r for r in caplog.records if r.getMessage() == "request" and r.path == "/api/collections")
    assert (rec.method, rec.route, rec.status, rec.request_id) == ("GET", "/api/collections", 200, "abc123")
    assert rec.ms >= 0


def test_json_log_formatter_writes_one_object_per_line() -> None:
    from lookalike.server.run import JsonFormatter

    record = logging.LogRecord("lookalike.server", logging.INFO, "x", 1, "request", None, None)
    record.status = 200
    line = JsonFormatter().format(record)
    assert json.loads(line) | {"ts": 0} == {"ts": 0, "level": "info", "logger": "lookalike.server",
                                            "msg": "request", "status": 200}


def test_unknown_route_and_wrong_method_are_json_errors(client: TestClient) -> None:
    r = client.get("/api/nope")
    assert r.status_code == 404 and r.json()["error"] == "not-found"
    r = client.get("/api/search")
    assert r.status_code == 405 and r.json()["error"] == "method-not-allowed"


# -- search ---------------------------------------------------------------------------------------
def test_search_by_multipart_upload_finds_the_other_views(client: TestClient) -> None:
    r = client.post("/api/search?k=4&collection=uk", files=upload(jpeg(0)))
    assert r.status_code == 200
    body = r.json()
    assert body["collection"] == "uk" and body["k"] == 4 and body["took_ms"] > 0
    assert sorted(names(body["results"])) == [f"ukbench0000{i}.jpg" for i in range(4)]
    top = body["results"][0]
    assert top["rank"] == 1 and top["score"] == pytest.approx(1.0, abs=3e-3)  # refined score of the same picture
    assert Path(top["path"]).is_absolute()
    assert top["thumbnail_url"] == f"/api/collections/uk/images/{top['id']}/thumbnail"
    assert {"metadata", "tags", "group_id", "width", "height", "image_url"} <= set(top)
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_search_reads_k_and_collection_from_form_fields_on_the_short_route(client: TestClient) -> None:
    r = client.post("/search", files=upload(jpeg(4)), data={"k": "3", "collection": "uk"})
    assert r.status_code == 200
    assert names(r.json()["results"])[0] == "ukbench00004.jpg" and len(r.json()["results"]) == 3


def test_search_by_raw_image_body(client: TestClient) -> None:
    r = client.post("/api/search?collection=uk&k=4", content=jpeg(8), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200 and names(r.json()["results"])[0] == "ukbench00008.jpg"
    r = client.post("/api/search?collection=uk&k=1", content=jpeg(8),
                    headers={"Content-Type": "application/octet-stream"})
    assert names(r.json()["results"]) == ["ukbench00008.jpg"]


def test_search_by_base64_json_and_data_url(client: TestClient) -> None:
    encoded = base64.b64encode(jpeg(12)).decode()
    r = client.post("/api/search", json={"image_base64": encoded, "k": 2, "collection": "uk"})
    assert r.status_code == 200 and names(r.json()["results"])[0] == "ukbench00012.jpg"
    r = client.post("/api/search", json={"image_base64": "data:image/jpeg;base64," + encoded, "k": 1,
                                         "collection": "uk"})
    assert names(r.json()["results"]) == ["ukbench00012.jpg"]
    r = client.post("/api/search", json={"image_base64": "%%%not base64", "collection": "uk"})
    assert r.status_code == 400 and r.json()["error"] == "bad-base64"


def test_search_by_indexed_id_is_more_like_this_without_itself(client: TestClient) -> None:
    first = client.post("/api/search?collection=uk&k=1", files=upload(jpeg(16))).json()["results"][0]
    r = client.post("/api/search", json={"id": first["id"], "k": 3, "collection": "uk"})
    assert r.status_code == 200
    assert sorted(names(r.json()["results"])) == ["ukbench00017.jpg", "ukbench00018.jpg", "ukbench00019.jpg"]
    r = client.post(f"/api/search?collection=uk&k=3&id={first['id']}")
    assert first["id"] not in [h["id"] for h in r.json()["results"]]


def test_search_by_text_needs_a_model_with_a_text_tower(client: TestClient) -> None:
    r = client.post("/api/search", json={"text": "a red car", "collection": "uk", "k": 3})
    assert r.status_code == 200 and len(r.json()["results"]) == 3  # the default model's offline fallback
    r = client.post("/api/collections", json={"name": "hashes", "model": "phash"}, headers=WRITE)
    assert r.status_code == 201, r.text
    assert client.post("/api/collections/hashes/images", files=upload(jpeg(0)), headers=WRITE).status_code == 201
    r = client.post("/api/search", json={"text": "a red car", "collection": "hashes"})
    assert r.status_code == 400 and "text tower" in r.json()["message"]


def test_search_score_threshold_and_metadata_filters(client: TestClient) -> None:
    r = client.post("/api/search?collection=uk&k=10&min_score=0.7", files=upload(jpeg(0)))
    assert r.status_code == 200 and all(h["score"] >= 0.7 for h in r.json()["results"])
    items = [("files", (f"{i}.jpg", jpeg(i), "image/jpeg")) for i in range(8)]
    r = client.post("/api/collections/filters/images/bulk", files=items, data={"ids": [f"pic{i}" for i in range(8)]},
                    headers=WRITE)
    assert r.status_code == 201, r.text
    assert client.get("/api/collections/filters/images/count").json()["count"] == 8
    ids = {h["external_id"]: h["id"] for h in client.post(
        "/api/search?collection=filters&k=8", files=upload(jpeg(0))).json()["results"]}
    for name in ("pic1", "pic5"):
        client.patch(f"/api/collections/filters/images/{ids[name]}", json={
            "group_id": "g1", "tags": ["red", "car"], "metadata": {"camera": "x100"}}, headers=WRITE)
    for query in ("group_id=g1", "tag=red&tag=car", "where=camera%3Dx100", "group=g1"):
        r = client.post(f"/api/search?collection=filters&k=8&{query}", files=upload(jpeg(0)))
        assert sorted(h["external_id"] for h in r.json()["results"]) == ["pic1", "pic5"], query
    r = client.post("/api/search", json={"image_base64": base64.b64encode(jpeg(0)).decode(), "collection": "filters",
                                         "filters": {"tags": ["car"], "metadata": {"camera": "x100"}}})
    assert sorted(h["external_id"] for h in r.json()["results"]) == ["pic1", "pic5"]
    r = client.post("/api/search?collection=filters&tag=nope", files=upload(jpeg(0)))
    assert r.status_code == 200 and r.json()["results"] == []
    r = client.post("/api/search?collection=filters&where=novalue", files=upload(jpeg(0)))
    assert r.status_code == 422


@pytest.mark.parametrize(("request_kwargs", "status", "code"), [
    ({"params": {"collection": "uk"}}, 400, "no-query"),
    ({"params": {"collection": "uk"}, "files": upload(b"")}, 400, "empty"),
    ({"params": {"collection": "uk", "k": "0"}, "files": "jpeg"}, 422, "bad-parameter"),
    ({"params": {"collection": "uk", "k": "many"}, "files": "jpeg"}, 422, "bad-parameter"),
    ({"params": {"collection": "uk", "k": "100000"}, "files": "jpeg"}, 422, "bad-parameter"),
    ({"params": {"collection": "uk", "min_score": "high"}, "files": "jpeg"}, 422, "bad-parameter"),
    ({"params": {"collection": "nowhere"}, "files": "jpeg"}, 404, "unknown-collection"),
    ({"params": {"collection": "uk", "id": "999999"}}, 404, "unknown-image"),
    ({"params": {"collection": "uk"}, "content": b"{not json", "headers": {"Content-Type": "application/json"}},
     400, "bad-json"),
    ({"params": {"collection": "uk"}, "content": b"[1]", "headers": {"Content-Type": "application/json"}},
     400, "bad-json"),
    ({"params": {"collection": "uk"}, "content": b"x", "headers": {"Content-Type": "text/plain"}},
     415, "unsupported-content-type"),
])
def test_search_refuses_bad_requests_with_a_json_4xx(client: TestClient, request_kwargs: dict, status: int,
                                                    code: str) -> None:
    if request_kwargs.get("files") == "jpeg":
        request_kwargs = {**request_kwargs, "files": upload(jpeg(0))}
    r = client.post("/api/search", **request_kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"] == code and r.json()["message"]


@pytest.mark.parametrize("route", ["/api/search", "/api/regions"])
def test_a_bad_collection_name_is_refused_wherever_it_is_given(client: TestClient, route: str) -> None:
    """The query string's name is checked even where the form names a good one (the form's wins)."""
    for params, data in (({"collection": "a" * 65}, None), ({"collection": "a" * 65}, {"collection": "uk"}),
                         ({"collection": ""}, None), (None, {"collection": "../uk"})):
        r = client.post(route, params=params, data=data, files=upload(jpeg(0)))
        assert r.status_code == 422 and r.json()["error"] == "bad-parameter", r.text
    assert client.post(route, params={"collection": "uk"}, files=upload(jpeg(0))).status_code == 200


def test_search_with_an_image_and_text_is_ambiguous(client: TestClient) -> None:
    r = client.post("/api/search?collection=uk&text=cat", files=upload(jpeg(0)))
    assert r.status_code == 400 and r.json()["error"] == "ambiguous-query"


def test_non_image_is_refused_by_content_whatever_its_name(client: TestClient) -> None:
    r = client.post("/api/search?collection=uk", files=upload(b"not an image at all", "x.jpg", "image/jpeg"))
    assert r.status_code == 415 and r.json()["error"] == "not-an-image"
    html = b"<html><script>alert(1)</script></html>"
    r = client.post("/api/search?collection=uk", files=upload(html, "photo.png", "image/png"))
    assert r.status_code == 415
    # a real JPEG is accepted even when called text
    r = client.post("/api/search?collection=uk&k=1", files=upload(jpeg(20), "notes.txt", "text/plain"))
    assert r.status_code == 200 and names(r.json()["results"]) == ["ukbench00020.jpg"]


def test_truncated_image_is_a_422(client: TestClient) -> None:
    data = jpeg(0)
    r = client.post("/api/search?collection=uk", files=upload(data[: len(data) // 3]))
    assert r.status_code == 422 and r.json()["error"] in ("truncated", "corrupt")


def test_30_mb_upload_is_refused_with_413(client: TestClient) -> None:
    big = b"\xff\xd8" + b"\0" * 30_000_000
    r = client.post("/api/search?collection=uk", files=upload(big, "big.jpg"))
    assert r.status_code == 413 and r.json()["error"] == "too-large"
    r = client.post("/api/search?collection=uk", content=big, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413


def test_upload_size_limit_applies_to_every_way_of_sending(strict_client: TestClient) -> None:
    data = jpeg(0)
    assert len(data) > 10_000
    for kwargs in ({"files": upload(data)}, {"content": data, "headers": {"Content-Type": "image/jpeg"}},
                   {"json": {"image_base64": base64.b64encode(data).decode()}}):
        r = strict_client.post("/api/search?collection=uk", **kwargs)
        assert r.status_code == 413, kwargs.keys()
        assert "10000" in r.json()["message"]


def test_streamed_body_without_length_is_cut_at_the_limit(strict_client: TestClient) -> None:
    def chunks():
        for _ in range(200):
            yield b"\0" * 4096

    r = strict_client.post("/api/search?collection=uk", content=chunks(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413


def test_pixel_limit_refuses_decompression_bombs(strict_client: TestClient) -> None:
    r = strict_client.post("/api/search?collection=uk", files=upload(png((1000, 1000)), "big.png", "image/png"))
    assert r.status_code == 413 and "pixel" in r.json()["message"]
    r = strict_client.post("/api/search?collection=uk&k=1", files=upload(png((300, 300)), "ok.png", "image/png"))
    assert r.status_code == 200


def test_k_is_capped_by_the_server_limit(strict_client: TestClient) -> None:
    r = strict_client.post("/api/search?collection=uk&k=21", files=upload(png((100, 100))))
    assert r.status_code == 422 and "between 1 and 20" in r.json()["message"]


def test_searching_an_empty_collection_is_a_409(client: TestClient) -> None:
    client.post("/api/collections", json={"name": "empty"}, headers=WRITE)
    r = client.post("/api/search?collection=empty", files=upload(jpeg(0)))
    assert r.status_code == 409 and r.json()["error"] == "empty-collection"
    client.delete("/api/collections/empty", headers=WRITE)


# -- compare --------------------------------------------------------------------------------------
def test_compare_gives_a_similarity_and_a_verdict(client: TestClient) -> None:
    original = jpeg(0)
    r = client.post("/api/compare", files={"a": ("a.jpg", original), "b": ("b.jpg", smaller_jpeg(original))})
    assert r.status_code == 200
    body = r.json()
    assert body["verdict"] == "duplicate" and 0.95 <= body["similarity"] <= 1
    same_object = client.post("/api/compare", files={"a": ("a.jpg", original), "b": ("b.jpg", jpeg(3))}).json()
    assert same_object["verdict"] == "similar" and 0.7 <= same_object["similarity"] < 0.95
    other = client.post("/api/compare", files={"a": ("a.jpg", original), "b": ("b.jpg", jpeg(37))}).json()
    assert other["verdict"] == "different" and 0 <= other["similarity"] < 0.7


def test_compare_accepts_indexed_ids_of_a_collection(client: TestClient) -> None:
    hits = client.post("/api/search?collection=uk&k=2", files=upload(jpeg(0))).json()["results"]
    by_ids = client.post("/api/compare", data={"a_id": str(hits[0]["id"]), "b_id": str(hits[1]["id"]),
                                               "collection": "uk"})
    by_upload = client.post("/api/compare", data={"b_id": str(hits[1]["id"]), "collection": "uk"},
                            files={"a": ("a.jpg", jpeg(0), "image/jpeg")})
    assert by_ids.status_code == 200 and by_upload.status_code == 200
    assert 0.3 < by_ids.json()["similarity"] < 1  # the stored vectors' own cosine, not the refined search score
    assert by_ids.json()["similarity"] == pytest.approx(by_upload.json()["similarity"], abs=1e-4)


def test_compare_errors_name_the_image_at_fault(client: TestClient) -> None:
    r = client.post("/api/compare", files={"a": ("a.jpg", jpeg(0))})
    assert r.status_code == 400 and "`b`" in r.json()["message"]
    r = client.post("/api/compare", files={"a": ("a.jpg", jpeg(0)), "b": ("b.jpg", b"hello")})
    assert r.status_code == 415 and r.json()["message"].startswith("image b")
    r = client.post("/api/compare", data={"a_id": "1", "b_id": "2"})
    assert r.status_code == 400 and "collection" in r.json()["message"]


# -- collections ----------------------------------------------------------------------------------
def test_list_and_describe_collections(client: TestClient) -> None:
    listed = client.get("/api/collections").json()
    uk = next(c for c in listed["collections"] if c["name"] == "uk")
    assert uk["count"] == 40 and uk["dim"] == 2304 and uk["text"] is True
    described = client.get("/api/collections/uk").json()
    assert {k: described[k] for k in ("name", "count", "dim", "model", "index_type")} == \
        {k: uk[k] for k in ("name", "count", "dim", "model", "index_type")}
    assert described["size_bytes"] > 0
    assert client.get("/api/collections/nope").status_code == 404


def test_create_collection_with_model_and_index_settings_then_drop_it(client: TestClient) -> None:
    r = client.post("/api/collections", json={"name": "hnsw", "model": "efficientnet-lite0", "index_spec": "HNSW32"},
                    headers=WRITE)
    assert r.status_code == 201, r.text
    assert (r.json()["model"], r.json()["index_spec"], r.json()["count"]) == ("efficientnet-lite0", "HNSW32", 0)
    assert client.post("/api/collections", json={"name": "hnsw"}, headers=WRITE).status_code == 409
    r = client.delete("/api/collections/hnsw", headers=WRITE)
    assert r.status_code == 200 and r.json() == {"dropped": "hnsw", "count": 0}
    assert client.get("/api/collections/hnsw").status_code == 404
    assert client.delete("/api/collections/hnsw", headers=WRITE).status_code == 404


@pytest.mark.parametrize(("body", "status"), [
    ({"name": "bad name!"}, 422), ({"name": "x", "model": "no-such-model"}, 400),
    ({"name": "x", "index_spec": "NotAFactory"}, 400), ({}, 422),
])
def test_create_collection_refuses_bad_settings(client: TestClient, body: dict, status: int) -> None:
    r = client.post("/api/collections", json=body, headers=WRITE)
    assert r.status_code == status, r.text
    assert r.json()["message"]


# -- images ---------------------------------------------------------------------------------------
def test_image_lifecycle_add_get_update_replace_delete(client: TestClient, library) -> None:
    picture = smaller_jpeg(jpeg(0))  # bytes no other test uses, so they are deleted with the image
    r = client.post("/api/collections/life/images", files=upload(picture), headers=WRITE,
                    data={"id": "cup-1", "group_id": "cups", "tags": "kitchen,blue", "metadata": '{"shelf": 3}'})
    assert r.status_code == 201, r.text
    rec = r.json()
    assert (rec["external_id"], rec["group_id"], rec["tags"], rec["metadata"]) == \
        ("cup-1", "cups", ["kitchen", "blue"], {"shelf": 3})
    image_id = rec["id"]
    stored = library.home / "uploads" / rec["content_hash"]
    assert stored.read_bytes() == picture
    assert client.get("/api/collections/life/images/count").json()["count"] == 1
    assert library.store.pending("life") == [], "uploads are refined (DBA) as they arrive"
    assert library.info("life").settings["refine"]["dba_k"] == library.settings.dba_k
    assert client.get(f"/api/collections/life/images/{image_id}").json()["content_hash"] == rec["content_hash"]
    thumb = client.get(f"/api/collections/life/images/{image_id}/thumbnail?size=64")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 64
    again = client.get(f"/api/collections/life/images/{image_id}/thumbnail?size=64",
                       headers={"If-None-Match": thumb.headers["etag"]})
    assert again.status_code == 304
    original = client.get(f"/api/collections/life/images/{image_id}/file")
    assert original.content == picture and original.headers["content-type"] == "image/jpeg"

    r = client.patch(f"/api/collections/life/images/{image_id}", headers=WRITE,
                     json={"tags": ["mug"], "metadata": {"colour": "blue"}})
    assert r.status_code == 200
    assert (r.json()["tags"], r.json()["metadata"], r.json()["group_id"]) == \
        (["mug"], {"shelf": 3, "colour": "blue"}, "cups")

    replacement = smaller_jpeg(jpeg(5))
    r = client.put(f"/api/collections/life/images/{image_id}", files=upload(replacement), headers=WRITE)
    assert r.status_code == 200 and r.json()["id"] == image_id and r.json()["tags"] == ["mug"]
    assert r.json()["content_hash"] != rec["content_hash"] and not stored.exists()
    assert library.store.pending("life") == []
    top = client.post("/api/search?collection=life&k=1", files=upload(replacement)).json()["results"][0]
    assert top["id"] == image_id and top["score"] == pytest.approx(1.0, abs=3e-3)

    r = client.delete(f"/api/collections/life/images/{image_id}", headers=WRITE)
    assert r.status_code == 200 and r.json()["removed"] == 1
    assert client.get(f"/api/collections/life/images/{image_id}").status_code == 404
    assert client.delete(f"/api/collections/life/images/{image_id}", headers=WRITE).status_code == 404
    assert not (library.home / "uploads" / top["content_hash"]).exists()
    assert client.get("/api/collections/life/images/count").json()["count"] == 0


def test_adding_with_an_existing_id_replaces_that_image(client: TestClient) -> None:
    first = client.post("/api/collections/reuse/images", files=upload(jpeg(0)), data={"id": "a"},
                        headers=WRITE).json()
    second = client.post("/api/collections/reuse/images", files=upload(jpeg(1)), data={"id": "a"},
                         headers=WRITE).json()
    assert first["id"] == second["id"] and first["content_hash"] != second["content_hash"]
    assert client.get("/api/collections/reuse/images/count").json()["count"] == 1


def test_bulk_add_writes_every_image(client: TestClient) -> None:
    files = [("files", (f"{i}.jpg", jpeg(i), "image/jpeg")) for i in range(4)]
    r = client.post("/api/collections/bulk/images/bulk", files=files, data={"group_id": "b", "tags": "t"},
                    headers=WRITE)
    assert r.status_code == 201 and r.json()["added"] == 4
    assert all(i["group_id"] == "b" and i["tags"] == ["t"] for i in r.json()["images"])
    assert client.get("/api/collections/bulk/images/count").json()["count"] == 4


def test_failed_bulk_add_leaves_the_collection_as_it_was(client: TestClient) -> None:
    files = [("files", ("0.jpg", jpeg(10), "image/jpeg")), ("files", ("1.jpg", b"garbage", "image/jpeg"))]
    r = client.post("/api/collections/uk/images/bulk", files=files, headers=WRITE)
    assert r.status_code == 415 and r.json()["index"] == 1 and "nothing was added" in r.json()["message"]
    assert client.get("/api/collections/uk/images/count").json()["count"] == 40
    # a failed first write does not even create the collection
    r = client.post("/api/collections/never/images/bulk", files=files, headers=WRITE)
    assert r.status_code == 415 and client.get("/api/collections/never").status_code == 404
    r = client.post("/api/collections/never/images", files=upload(b"GIF89a broken"), headers=WRITE)
    assert r.status_code in (415, 422) and client.get("/api/collections/never").status_code == 404


def test_bulk_add_refuses_mismatched_or_duplicate_ids(client: TestClient) -> None:
    files = [("files", (f"{i}.jpg", jpeg(i), "image/jpeg")) for i in range(2)]
    r = client.post("/api/collections/bulk2/images/bulk", files=files, data={"ids": ["x"]}, headers=WRITE)
    assert r.status_code == 400
    r = client.post("/api/collections/bulk2/images/bulk", files=files, data={"ids": ["x", "x"]}, headers=WRITE)
    assert r.status_code == 400 and r.json()["error"] == "duplicate-id"


def test_failed_replace_leaves_the_image_as_it_was(client: TestClient) -> None:
    hit = client.post("/api/search?collection=uk&k=1", files=upload(jpeg(24))).json()["results"][0]
    r = client.put(f"/api/collections/uk/images/{hit['id']}", files=upload(b"\x89PNG\r\n\x1a\nbroken"),
                   headers=WRITE)
    assert r.status_code in (415, 422)
    assert client.get(f"/api/collections/uk/images/{hit['id']}").json()["content_hash"] == hit["content_hash"]
    again = client.post("/api/search?collection=uk&k=1", files=upload(jpeg(24))).json()["results"][0]
    assert again["id"] == hit["id"] and again["score"] == pytest.approx(1.0, abs=3e-3)


def test_bad_metadata_json_is_a_400(client: TestClient) -> None:
    r = client.post("/api/collections/meta/images", files=upload(jpeg(0)), data={"metadata": "{oops"},
                    headers=WRITE)
    assert r.status_code == 400 and r.json()["error"] == "bad-metadata"
    r = client.post("/api/collections/meta/images", files=upload(jpeg(0)), data={"metadata": "[1]"},
                    headers=WRITE)
    assert r.status_code == 400


def test_image_endpoints_404_on_unknown_ids_and_validate_them(client: TestClient) -> None:
    for method, suffix in (("GET", ""), ("GET", "/thumbnail"), ("GET", "/file"), ("DELETE", "")):
        assert client.request(method, f"/api/collections/uk/images/999999{suffix}", headers=WRITE).status_code == 404
    r = client.patch("/api/collections/uk/images/999999", json={"tags": ["x"]}, headers=WRITE)
    assert r.status_code == 404
    r = client.get("/api/collections/uk/images/abc")
    assert r.status_code == 422 and r.json()["error"] == "invalid-request"
    for suffix in ("", "/file", "/thumbnail"):  # past SQLite's integer range: refused by the schema, not a 500
        r = client.get(f"/api/collections/uk/images/36893488147419103232{suffix}")
        assert r.status_code == 422 and r.json()["error"] == "invalid-request"
    r = client.put("/api/collections/uk/images/count", headers=WRITE)  # a sibling route's name is not an id
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    assert client.get("/api/collections/nope/images/count").status_code == 404


# -- safety: files served, auth, CORS -------------------------------------------------------------
def test_only_catalogued_files_are_served(client: TestClient) -> None:
    for path in ("/api/collections/uk/images/..%2F..%2F..%2Fetc%2Fpasswd/file",
                 "/api/collections/uk/images/../../../../etc/passwd", "/static/../../../../etc/passwd",
                 "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/api/collections/..%2Fetc/images/1/file"):
        r = client.get(path)
        assert r.status_code in (404, 422), path
        assert b"root:" not in r.content


def test_a_vanished_file_is_a_404(client: TestClient, photos: Path) -> None:
    hit = client.post("/api/search?collection=uk&k=1", files=upload(jpeg(28))).json()["results"][0]
    moved = photos / "moved.bak"
    Path(hit["path"]).rename(moved)
    try:
        r = client.get(f"/api/collections/uk/images/{hit['id']}/file")
        assert r.status_code == 404 and r.json()["error"] == "gone"
    finally:
        moved.rename(hit["path"])
    assert client.get(f"/api/collections/uk/images/{hit['id']}/file").status_code == 200


@pytest.mark.parametrize(("method", "path", "kwargs"), [
    ("POST", "/api/collections", {"json": {"name": "k"}}),
    ("DELETE", "/api/collections/uk", {}),
    ("POST", "/api/collections/uk/images", {"files": {"file": ("a.jpg", b"x")}}),
    ("POST", "/api/collections/uk/images/bulk", {"files": {"files": ("a.jpg", b"x")}}),
    ("PATCH", "/api/collections/uk/images/1", {"json": {"tags": []}}),
    ("PUT", "/api/collections/uk/images/1", {"files": {"file": ("a.jpg", b"x")}}),
    ("DELETE", "/api/collections/uk/images/1", {}),
    ("POST", "/api/collections/uk/index", {"json": {"path": "/"}}),
])
def test_write_endpoints_need_the_api_key(client: TestClient, method: str, path: str, kwargs: dict) -> None:
    r = client.request(method, path, **kwargs)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = client.request(method, path, headers={"X-API-Key": "wrong"}, **kwargs)
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert client.get("/api/collections/uk/images/count").json()["count"] == 40


def test_bearer_token_is_accepted_and_reads_need_no_key(client: TestClient) -> None:
    r = client.post("/api/collections", json={"name": "bearer"}, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 201
    client.delete("/api/collections/bearer", headers=WRITE)
    assert client.get("/api/collections").status_code == 200
    assert client.post("/api/search?collection=uk&k=1", files=upload(jpeg(0))).status_code == 200


def test_no_api_key_configured_means_writes_are_open(strict_client: TestClient) -> None:
    assert strict_client.post("/api/collections", json={"name": "open"}).status_code == 201
    assert strict_client.delete("/api/collections/open").status_code == 200


def test_cors_allows_only_the_configured_origins(client: TestClient, strict_client: TestClient) -> None:
    preflight = {"Access-Control-Request-Method": "POST"}
    r = client.options("/api/search", headers={"Origin": "https://photos.example.org", **preflight})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://photos.example.org"
    r = client.options("/api/search", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in r.headers
    r = strict_client.get("/api/collections", headers={"Origin": "https://photos.example.org"})
    assert "access-control-allow-origin" not in r.headers


# -- index jobs -----------------------------------------------------------------------------------
def wait_job(client: TestClient, job_id: str, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def test_index_job_runs_with_progress_while_searches_stay_consistent(client: TestClient, job_root: Path) -> None:
    r = client.post("/api/collections/jobs/index", json={"path": str(job_root / "more"), "tags": ["job"]},
                    headers=WRITE)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] in ("queued", "running", "done") and job["url"] == f"/api/jobs/{job['id']}"
    # the target collection appears and grows while searches keep answering consistently
    errors: list[str] = []
    seen_counts: list[int] = []

    states: list[str] = []

    def searcher() -> None:
        for _ in range(6):
            states.append(client.get(f"/api/jobs/{job['id']}").json()["state"])
            res = client.post("/api/search?collection=uk&k=4", files=upload(jpeg(0)))
            if res.status_code != 200:
                errors.append(res.text)
                continue
            top = names(res.json()["results"])
            if sorted(top) != [f"ukbench0000{i}.jpg" for i in range(4)]:
                errors.append(f"inconsistent: {top}")
            jobs_res = client.post("/api/search?collection=jobs&k=50", files=upload(jpeg(40)))
            if jobs_res.status_code == 200:
                results = jobs_res.json()["results"]
                scores = [h["score"] for h in results]
                if scores != sorted(scores, reverse=True) or len({h["id"] for h in results}) != len(results):
                    errors.append("jobs results out of order or repeated")
                seen_counts.append(len(results))
            elif jobs_res.status_code not in (404, 409):
                errors.append(jobs_res.text)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = wait_job(client, job["id"])
    assert not errors, errors[:3]
    assert "running" in states  # the searches did overlap the job
    assert done["state"] == "done" and done["done"] == done["total"] == 24 and done["progress"] == 1.0
    assert done["report"]["added"] == 24 and done["report"]["count"] == 24
    assert client.get("/api/collections/jobs/images/count").json()["count"] == 24
    listed = client.get("/api/jobs").json()
    assert listed["jobs"][0]["id"] == job["id"] and listed["queued"] == 0
    hit = client.post("/api/search?collection=jobs&k=1", files=upload(jpeg(40))).json()["results"][0]
    assert hit["tags"] == ["job"] and Path(hit["path"]).name == "ukbench00040.jpg"
    assert client.get(f"/api/collections/jobs/images/{hit['id']}/thumbnail").status_code == 200


@pytest.mark.parametrize(("path", "status", "code"), [
    ("/etc", 403, "outside-allowed-roots"),
    ("relative/folder", 400, "bad-path"),
    ("{root}/../../etc", 403, "outside-allowed-roots"),
    ("{root}/missing", 404, "missing"),
])
def test_index_job_only_reads_allowed_roots(client: TestClient, job_root: Path, path: str, status: int,
                                            code: str) -> None:
    r = client.post("/api/collections/jobs2/index", json={"path": path.format(root=job_root)}, headers=WRITE)
    assert r.status_code == status and r.json()["error"] == code


def test_index_job_is_off_without_allowed_roots(strict_client: TestClient, job_root: Path) -> None:
    r = strict_client.post("/api/collections/x/index", json={"path": str(job_root)})
    assert r.status_code == 403 and "LOOKALIKE_ALLOWED_ROOTS" in r.json()["message"]


def test_unknown_job_is_a_404(client: TestClient) -> None:
    r = client.get("/api/jobs/nope")
    assert r.status_code == 404 and r.json()["error"] == "unknown-job"


def test_models_endpoint_lists_embedders(client: TestClient) -> None:
    body = client.get("/api/models").json()
    assert body["default"] in {m["name"] for m in body["models"]}


def test_sniff_knows_the_common_formats() -> None:
    assert sniff(jpeg(0)) == "jpeg"
    assert sniff(png((2, 2))) == "png"
    assert sniff(b"GIF89a....") == "gif"
    assert sniff(b"RIFF\0\0\0\0WEBPVP8 ") == "webp"
    assert sniff(b"\0\0\0\x18ftypheic") == "heif"
    assert sniff(b"%PDF-1.4") is None and sniff(b"") is None


def test_search_expand_switch(client: TestClient) -> None:
    refined = client.post("/api/search?collection=uk&k=4", files=upload(jpeg(0))).json()["results"]
    plain = client.post("/api/search?collection=uk&k=4&expand=false", files=upload(jpeg(0))).json()["results"]
    assert refined[0]["id"] == plain[0]["id"]
    assert [r["score"] for r in refined] != [r["score"] for r in plain]
    bad = client.post("/api/search?collection=uk&expand=maybe", files=upload(jpeg(0)))
    assert bad.status_code == 422 and "expand" in bad.json()["message"]
    turned = client.post("/api/search?collection=uk&k=4&rotation_invariant=true", files=upload(jpeg(0)))
    assert turned.status_code == 200 and turned.json()["results"][0]["id"] == refined[0]["id"]
    assert turned.json()["rotation_invariant"] is True and turned.json()["expand"] is True
    bad = client.post("/api/search?collection=uk&rotation_invariant=2", files=upload(jpeg(0)))
    assert bad.status_code == 422 and "rotation_invariant" in bad.json()["message"]
