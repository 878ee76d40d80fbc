"""Shared fixtures: the shared data sets, and libraries indexed once per test run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lookalike import Library

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATASETS = SHARED / "datasets"
UKBENCH = DATASETS / "ukbench_first1000"
FLOWERS = DATASETS / "tf_flowers_1000"
FLICKR = DATASETS / "flickr8k_1000"


def ukbench_images(n: int | None = None, start: int = 0) -> list[Path]:
    files = sorted(UKBENCH.glob("ukbench*.jpg"))
    return files[start:start + n] if n else files[start:]


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One models folder for the whole run, so each ONNX graph is built once."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def home(tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh library directory whose models folder is the shared cache."""
    lib_home = tmp_path / "home"
    lib_home.mkdir()
    (lib_home / "models").symlink_to(model_cache, target_is_directory=True)
    monkeypatch.setenv("LOOKALIKE_HOME", str(lib_home))
    return lib_home


def copy_photos(folder: Path, n: int) -> Path:
    """The first n UKBench photos copied into `folder` (made here), which tests may then change."""
    folder.mkdir()
    for path in ukbench_images(n):
        shutil.copy(path, folder)
    return folder


@pytest.fixture
def small_folder(tmp_path: Path) -> Path:
    """12 real photos (3 UKBench objects x 4 views) copied to a writable folder."""
    return copy_photos(tmp_path / "photos", 12)


@pytest.fixture(scope="session")
def ukbench_library(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Library:
    """UKBench-1000 indexed once with the default model, shared by every test that only reads it."""
    lib_home = tmp_path_factory.mktemp("ukbench-home")
    (lib_home / "models").symlink_to(model_cache, target_is_directory=True)
    lib = Library.open(lib_home)
    lib.index([UKBENCH], "uk")
    yield lib
    lib.close()


def cli_env(home: Path) -> dict[str, str]:
    return {**os.environ, "LOOKALIKE_HOME": str(home)}


_FIGURES: dict[str, str] = {}


@pytest.fixture(scope="session")
def figures() -> dict[str, str]:
    """Measured figures a test wants reported at the end of the run (e.g. the UKBench N-S score)."""
    return _FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("measured figures")
        for name, value in _FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")
