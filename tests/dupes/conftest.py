"""Shared fixtures: real UKBench photos and edited copies of them, written to a temporary folder."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from lookalike.store import ImageRecord, open_store
from tests.conftest import ukbench_images

# (name, edit) of the copies every test may use; the originals are UKBench photos 0, 4, 8, 12 (four objects)
EDITS = {
    "crop": lambda im: im.crop((30, 20, im.width - 40, im.height - 30)),
    "scale": lambda im: im.resize((im.width * 2 // 5, im.height // 2)),
    "rot90": lambda im: im.rotate(90, expand=True),
    "mirror_grey": lambda im: ImageOps.grayscale(ImageOps.mirror(im)).convert("RGB"),
    "tilt_border": lambda im: ImageOps.expand(im.rotate(9, resample=Image.Resampling.BICUBIC), 20, fill=(200, 30, 30)),
}


@pytest.fixture(scope="session")
def originals() -> list[Path]:
    """UKBench photos 0-15: four objects, four different photos each."""
    return ukbench_images(16)


@pytest.fixture(scope="session")
def copies(tmp_path_factory: pytest.TempPathFactory, originals: list[Path]) -> dict[str, tuple[Path, Path]]:
    """edit name -> (copy, its original): one copy of each of the first photos of objects 0..4."""
    out = tmp_path_factory.mktemp("copies")
    made = {}
    for (name, edit), orig in zip(EDITS.items(), originals[0:20:4] + originals[1:2], strict=False):
        im = edit(Image.open(orig).convert("RGB"))
        path = out / f"copy_{name}.jpg"
        im.save(path, quality=60)
        made[name] = (path, orig)
    return made


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def photo_folder(tmp_path: Path, originals: list[Path], copies: dict[str, tuple[Path, Path]]) -> Path:
    """A writable folder: 16 UKBench photos, the edited copies, and one byte-for-byte duplicate."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in originals:
        shutil.copy(p, folder)
    for c, _ in copies.values():
        shutil.copy(c, folder)
    shutil.copy(originals[5], folder / "exact_copy_of_5.jpg")
    return folder


def fake_vectors(paths: list[Path], originals: list[Path], copies: dict[str, tuple[Path, Path]]) -> np.ndarray:
    """Vectors where each picture sits near the other photos of its object (as a CNN embedding does):
    the object's direction plus a little noise; the verifier, not these vectors, must tell copies."""
    rng = np.random.default_rng(0)
    object_of = {p.name: i // 4 for i, p in enumerate(originals)}
    for c, o in copies.values():
        object_of[c.name] = object_of[o.name]
    object_of["exact_copy_of_5.jpg"] = object_of[originals[5].name]
    dirs = rng.normal(size=(8, 16))
    v = np.stack([dirs[object_of[p.name]] + 0.25 * rng.normal(size=16) for p in paths]).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def fake_store(tmp_path: Path, photo_folder: Path, originals: list[Path], copies: dict[str, tuple[Path, Path]]):
    """A store holding every file of `photo_folder` with `fake_vectors` (no model needed)."""
    store = open_store(tmp_path / "home")
    store.create_collection("c", "fake", 16)
    paths = sorted(photo_folder.iterdir())
    records = []
    for p in paths:
        with Image.open(p) as im:
            w, h = im.size
        st = p.stat()
        records.append(ImageRecord(path=str(p), content_hash=sha256(p), size=st.st_size, mtime=st.st_mtime,
                                   width=w, height=h))
    store.upsert("c", records, fake_vectors(paths, originals, copies))
    yield store
    store.close()


def load(record: ImageRecord) -> Image.Image:
    return Image.open(record.path).convert("RGB")
