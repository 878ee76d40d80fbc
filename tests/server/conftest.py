"""Fixtures for the HTTP service: a 40-image UKBench library served by an in-process TestClient."""

from __future__ import annotations

import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageOps

pytest.importorskip("fastapi", reason="the server extra (fastapi) is not installed")
pytest.importorskip("httpx", reason="httpx (FastAPI's TestClient) is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from lookalike import Library  # noqa: E402
from lookalike.server import create_app  # noqa: E402
from lookalike.server.settings import ServerSettings  # noqa: E402

from ..conftest import ukbench_images  # noqa: E402

API_KEY = "test-key-123"
WRITE = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def served_home(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    home = tmp_path_factory.mktemp("server-home")
    (home / "models").symlink_to(model_cache, target_is_directory=True)
    return home


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 40 UKBench photos (10 objects x 4 views), copied so tests may index or delete them."""
    folder = tmp_path_factory.mktemp("photos")
    for path in ukbench_images(40):
        shutil.copy(path, folder)
    return folder


@pytest.fixture(scope="module")
def job_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An allowed root for index jobs: 24 more UKBench photos in a subfolder."""
    root = tmp_path_factory.mktemp("allowed")
    sub = root / "more"
    sub.mkdir()
    for path in ukbench_images(24, start=40):
        shutil.copy(path, sub)
    return root


@pytest.fixture(scope="module")
def library(served_home: Path, photos: Path) -> Iterator[Library]:
    lib = Library.open(served_home)
    lib.index([photos], "uk")
    yield lib
    lib.close()


@pytest.fixture(scope="module")
def settings(job_root: Path) -> ServerSettings:
    return ServerSettings(api_key=API_KEY, allowed_roots=[str(job_root)],
                          cors_origins=["https://photos.example.org"])


def wait_ready(client: TestClient, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while client.get("/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready: {client.get('/readyz').json()}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def client(library: Library, settings: ServerSettings) -> Iterator[TestClient]:
    with TestClient(create_app(library, settings=settings)) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def strict_client(library: Library) -> Iterator[TestClient]:
    """Small limits, no API key, no allowed roots: for the limit and disabled-feature cases."""
    settings = ServerSettings(max_upload_bytes=10_000, max_upload_pixels=200_000, max_k=20)
    with TestClient(create_app(library, settings=settings)) as c:
        wait_ready(c)
        yield c


def jpeg(path_index: int = 0) -> bytes:
    return ukbench_images(1, start=path_index)[0].read_bytes()


def names(results: list[dict]) -> list[str]:
    return [Path(r["path"]).name for r in results]


def wait_http_ready(base: str, alive: Callable[[], None] = lambda: None, timeout: float = 60) -> None:
    """Poll /readyz until the server answers 200; `alive` raises if the server died meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        alive()
        assert time.monotonic() < deadline, "server did not get ready"
        time.sleep(0.1)


def folder_with_copies(folder: Path) -> dict[str, tuple[str, str]]:
    """UKBench photos 0-7 (two objects, four different photos of each: look-alikes, not copies) and two
    edited copies; returns copy name -> (its original's name, how it was edited)."""
    folder.mkdir(parents=True, exist_ok=True)
    originals = ukbench_images(8)
    for path in originals:
        shutil.copy(path, folder)
    edits = {"copy_of_0.jpg": (originals[0], "cropped and scaled",
                               lambda im: im.crop((20, 15, im.width - 25, im.height - 20)).resize((200, 150))),
             "copy_of_4.jpg": (originals[4], "mirrored, grey and smaller",
                               lambda im: ImageOps.grayscale(ImageOps.mirror(im)).resize((240, 180)))}
    for name, (original, _, edit) in edits.items():
        edit(Image.open(original).convert("RGB")).save(folder / name, quality=70)
    return {name: (original.name, how) for name, (original, how, _) in edits.items()}


def review_app(root: Path, model_cache: Path) -> tuple[Library, Path, ServerSettings]:
    """A fresh library over `folder_with_copies` (collection "review"), and server settings with the API key
    and that folder as the allowed root: what the copies-review tests run against."""
    folder = root / "photos"
    folder_with_copies(folder)
    home = root / "home"
    home.mkdir()
    (home / "models").symlink_to(model_cache, target_is_directory=True)
    lib = Library.open(home)
    lib.index([folder], "review")
    return lib, folder, ServerSettings(api_key=API_KEY, allowed_roots=[str(folder)])
