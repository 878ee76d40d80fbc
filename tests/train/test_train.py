"""Real (short) training runs on 24 flower pictures: export, load, versions, resume, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import Library
from lookalike.cli import main
from lookalike.embed import trained
from lookalike.errors import AlreadyExists, LookalikeError, ModelMismatch
from lookalike.train.run import Interrupted, MissingExtra

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow
QUICK = {"epochs": 3, "views": 2, "dim": 64, "hidden": 128, "batch": 16}


def test_supervised_run_exports_an_onnx_model_that_matches_torch(lib: Library, labels_csv: Path,
                                                                 flower_folder: Path) -> None:
    card = lib.train("t-sup", "fl", labels=labels_csv, **QUICK)
    folder = trained.folder(lib.model_dir, "t-sup")
    assert (folder / "head.onnx").is_file()
    assert json.loads((folder / "card.json").read_text())["version"] == card["version"]
    assert card["base"] == lib.info("fl").model and card["split"]["validation"] >= 3
    assert card["metrics"]["before"] > 0 and card["metrics"]["after"] > 0
    assert card["export_max_abs_diff"] < 1e-4
    embedder = lib.embedder("t-sup")
    assert embedder.name == f"t-sup@{card['version']}" and embedder.dim == 64
    pictures = [Image.open(p).convert("RGB") for p in sorted(flower_folder.glob("*/*.jpg"))[:4]]
    vectors = embedder.embed_images(pictures)
    assert vectors.shape == (4, 64) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    from lookalike.train.fit import Head

    head = Head(embedder.base.dim, 64, 128)
    head.load_state_dict(torch.load(folder / "head.pt"))
    base = embedder.base.embed_images(pictures)
    with torch.no_grad():
        want = head(torch.from_numpy(base)).numpy()
    assert np.abs(want - vectors).max() < 1e-4
    assert any(c.name == embedder.name for c in lib.models())
    # usable with --model like any embedder; the collection records the exact version
    lib.index([flower_folder], "fl-sup", model="t-sup")
    info = lib.info("fl-sup")
    assert info.model == embedder.name and info.dim == 64
    hits = lib.search(str(sorted(flower_folder.glob("roses/*.jpg"))[0]), collection="fl-sup", k=5)
    assert hits and hits[0].path.endswith(".jpg")


def test_name_taken_then_force_makes_a_new_version_the_old_collection_refuses(lib: Library, labels_csv: Path,
                                                                              flower_folder: Path) -> None:
    first = lib.train("t-ver", "fl", labels=labels_csv, **QUICK)
    lib.index([flower_folder / "daisy"], "fl-ver", model="t-ver")
    with pytest.raises(AlreadyExists, match="model 't-ver' exists.*--force"):
        lib.train("t-ver", "fl", labels=labels_csv, **QUICK)
    second = lib.train("t-ver", "fl", labels=labels_csv, force=True, **{**QUICK, "epochs": 2, "lr": 3e-3})
    assert second["version"] != first["version"]
    query = str(sorted(flower_folder.glob("daisy/*.jpg"))[0])
    with pytest.raises(ModelMismatch, match="no longer exists"):
        lib.search(query, collection="fl-ver")
    with Library.open(lib.home) as fresh, pytest.raises(ModelMismatch):  # another process: the same refusal
        fresh.index([flower_folder / "roses"], "fl-ver", model="t-ver")


def test_interrupted_run_resumes_where_it_stopped(lib: Library, labels_csv: Path) -> None:
    params = {**QUICK, "epochs": 5, "patience": 100}
    whole = lib.train("t-whole", "fl", labels=labels_csv, **params)

    def stop_after_two(event: dict) -> None:
        if event["stage"] == "epoch" and event["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="after epoch 2 of 5.*--resume to continue from epoch 3"):
        lib.train("t-res", "fl", labels=labels_csv, progress=stop_after_two, **params)
    assert not trained.folder(lib.model_dir, "t-res").exists()  # nothing half-written
    with pytest.raises(Interrupted, match="stopped after epoch 2 of 5: continue it with --resume"):
        lib.train("t-res", "fl", labels=labels_csv, **params)
    epochs = []
    resumed = lib.train("t-res", "fl", labels=labels_csv, resume=True,
                        progress=lambda e: epochs.append(e["epoch"]) if e["stage"] == "epoch" else None, **params)
    assert epochs == [3, 4, 5]
    assert [h["epoch"] for h in resumed["metrics"]["history"]] == [1, 2, 3, 4, 5]
    assert resumed["version"] == whole["version"]  # the same run as an uninterrupted one
    with pytest.raises(LookalikeError, match="no interrupted run of 't-res2'"):
        lib.train("t-res2", "fl", labels=labels_csv, resume=True, **params)


def test_self_supervised_run(lib: Library) -> None:
    card = lib.train("t-ssl", "fl", self_supervised=True, **QUICK)
    assert card["mode"] == "self-supervised" and card["loss"] == "nt-xent" and card["data"]["classes"] == 0
    assert card["split"]["train"] + card["split"]["validation"] == 24
    assert 0 <= card["metrics"]["after"] <= 1


def test_bad_inputs(lib: Library, labels_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one_class = tmp_path / "one.csv"
    one_class.write_text("".join(f"{line.split(',')[0]},x\n" for line in labels_csv.read_text().splitlines()[1:]))
    with pytest.raises(LookalikeError, match="at least 2 classes"):
        lib.train("t-bad", "fl", labels=one_class)
    few = tmp_path / "few.csv"
    few.write_text("\n".join(labels_csv.read_text().splitlines()[:6]) + "\n")
    with pytest.raises(LookalikeError, match="only 5 labelled pictures"):
        lib.train("t-bad", "fl", labels=few)
    missing = tmp_path / "missing.csv"
    missing.write_text("daisy/not-there.jpg,daisy\n")
    with pytest.raises(LookalikeError, match="'daisy/not-there.jpg' is not in collection 'fl'"):
        lib.train("t-bad", "fl", labels=missing)
    with pytest.raises(LookalikeError, match="built-in model"):
        lib.train("efficientnet-lite0", "fl", self_supervised=True)
    with pytest.raises(LookalikeError, match="unknown-collection|no collection|unknown collection"):
        lib.train("t-bad", "nope", self_supervised=True)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "torch" else real(n, *a))
    with pytest.raises(MissingExtra, match=r"pip install 'lookalike\[train\]'"):
        lib.train("t-bad", "fl", self_supervised=True)
    assert not trained.folder(lib.model_dir, "t-bad").exists()


def test_cli_train_models_and_errors(train_home: Path, labels_csv: Path, capsys: pytest.CaptureFixture,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKALIKE_HOME", str(train_home))
    assert main(["train", "t-cli", "-c", "fl", "--labels", str(labels_csv), "--epochs", "2", "--views", "2",
                 "--dim", "64"]) == 0
    out = capsys.readouterr().out
    assert "t-cli@" in out and "validation mAP@10" in out and "--model t-cli" in out
    assert main(["train", "t-cli", "-c", "fl", "--labels", str(labels_csv)]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["train", "t-cli2", "-c", "fl"]) == 2  # neither --labels nor --self-supervised
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "trained on this library's pictures" in out and "t-cli@" in out and "mAP@10" in out
    assert main(["models", "--json"]) == 0
    cards = json.loads(capsys.readouterr().out)["models"]
    assert any(c["extra"].get("trained") and c["extra"]["base"] for c in cards)


def test_indexing_and_search_never_import_torch(train_home: Path, flower_folder: Path, labels_csv: Path) -> None:
    with Library.open(train_home) as lib:
        if not trained.exists(lib.model_dir, "t-notorch"):
            lib.train("t-notorch", "fl", labels=labels_csv, **QUICK)
    code = f"""
import sys
from lookalike import Library
with Library.open({str(train_home)!r}) as lib:
    lib.index([{str(flower_folder / 'tulips')!r}], 'fl-notorch', model='t-notorch')
    assert lib.search({str(sorted(flower_folder.glob('tulips/*.jpg'))[0])!r}, collection='fl-notorch')
    lib.models()
assert 'torch' not in sys.modules, 'torch was imported'
"""
    subprocess.run([sys.executable, "-c", code], check=True)
