"""The training job over HTTP: 202 with a url, progress, then the model card; bad requests answered."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lookalike import Library

pytest.importorskip("torch")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from lookalike.server import create_app  # noqa: E402
from lookalike.server.settings import ServerSettings  # noqa: E402

pytestmark = pytest.mark.slow


def test_train_job_runs_and_reports(train_home: Path, labels_csv: Path) -> None:
    # two apps over one library, as two server workers: either may run the job, both answer for it
    with Library.open(train_home) as lib, Library.open(train_home) as other_lib, \
            TestClient(create_app(lib, settings=ServerSettings())) as client, \
            TestClient(create_app(other_lib, settings=ServerSettings())) as other:
        r = client.post("/api/collections/fl/train", json={"name": "t-http", "self_supervised": True,
                                                           "epochs": 2, "views": 2, "force": True})
        assert r.status_code == 202, r.text
        assert r.json()["name"] == "t-http" and r.json()["state"] in ("queued", "running")
        url = r.json()["url"]
        for _ in range(600):
            job = other.get(url).json()
            if job["state"] in ("done", "failed"):
                break
            time.sleep(0.5)
        assert job["state"] == "done", job
        assert job["result"]["name"] == "t-http" and job["progress"] == 1.0 and job["stage"] == "done"
        assert client.get(url).json() == job
        assert client.post("/api/collections/fl/train", json={"name": "x"}).status_code == 400
        r = client.post("/api/collections/nope/train", json={"name": "x", "self_supervised": True})
        assert r.status_code == 404
        r = client.post("/api/collections/fl/train", json={"name": "x", "labels": str(labels_csv)})
        assert r.status_code == 403  # labels files only under allowed roots
        assert client.get("/api/train/unknown").status_code == 404
