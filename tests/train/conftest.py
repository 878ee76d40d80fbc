"""A small labelled collection (3 flower classes x 8 pictures), indexed once for the training tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from lookalike import Library

from ..conftest import FLOWERS

CLASSES = ("daisy", "roses", "tulips")
PER_CLASS = 8


@pytest.fixture(scope="session")
def flower_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("train-flowers") / "flowers"
    for cls in CLASSES:
        (folder / cls).mkdir(parents=True)
        for path in sorted((FLOWERS / cls).glob("*.jpg"))[:PER_CLASS]:
            shutil.copy(path, folder / cls / path.name)
    return folder


@pytest.fixture(scope="session")
def train_home(tmp_path_factory: pytest.TempPathFactory, model_cache: Path, flower_folder: Path) -> Path:
    """A library with collection 'fl' (the default model) over `flower_folder`; its own trained models."""
    home = tmp_path_factory.mktemp("train-home")
    models = home / "models"
    models.mkdir()
    with Library(home, model_dir=model_cache) as lib:  # build/reuse the shared ONNX graphs
        lib.embedder().embed_images([Image.new("RGB", (64, 64), "gray")])
    for entry in model_cache.iterdir():  # the base graphs, shared; trained/ stays this library's own
        if entry.name != "trained" and not (models / entry.name).exists():
            (models / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    with Library.open(home) as lib:
        lib.index([flower_folder], "fl")
    return home


@pytest.fixture
def lib(train_home: Path) -> Library:
    library = Library.open(train_home)
    yield library
    library.close()


@pytest.fixture(scope="session")
def labels_csv(flower_folder: Path) -> Path:
    csv = flower_folder.parent / "labels.csv"
    rows = [f"{p.parent.name}/{p.name},{p.parent.name}" for p in sorted(flower_folder.glob("*/*.jpg"))]
    csv.write_text("image,label\n" + "\n".join(rows) + "\n")
    return csv
