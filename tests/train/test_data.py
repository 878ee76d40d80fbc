"""Labels, split and inputs (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookalike.errors import NotFound
from lookalike.train.data import Item, TrainingDataError, check_supervised, check_unlabelled, labelled_items, split

CATALOGUE = [Item(n + 1, f"/photos/{c}/{c}{i}.jpg", f"h{c}{i}") for n, (c, i) in
             enumerate((c, i) for c in ("roses", "tulips") for i in range(10))]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


def test_csv_relative_absolute_and_partial(tmp_path: Path) -> None:
    csv = write(tmp_path, "image,label\nroses/roses1.jpg,r\n/photos/tulips/tulips2.jpg,t\ntulips3.jpg,t\n")
    items = labelled_items(csv, CATALOGUE, "c")
    assert {(i.path, i.label) for i in items} == {("/photos/roses/roses1.jpg", "r"),
                                                  ("/photos/tulips/tulips2.jpg", "t"),
                                                  ("/photos/tulips/tulips3.jpg", "t")}


@pytest.mark.parametrize(("text", "message"), [
    ("image,label\nroses/nope.jpg,r\n", "line 2: 'roses/nope.jpg' is not in collection 'c'"),
    ("/elsewhere/x.jpg,r\n", "does not exist and is not in collection 'c'"),
    ("roses/roses1.jpg\n", "expected 'image,label'"),
    ("roses/roses1.jpg,a\nroses/roses1.jpg,b\n", "labelled both 'a' and 'b'"),
])
def test_csv_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TrainingDataError, match=message.replace("(", r"\(")):
        labelled_items(write(tmp_path, text), CATALOGUE, "c")


def test_unindexed_file_on_disk(tmp_path: Path) -> None:
    real = tmp_path / "real.jpg"
    real.write_bytes(b"x")
    with pytest.raises(TrainingDataError, match="is not indexed in collection 'c'"):
        labelled_items(write(tmp_path, f"{real},a\n"), CATALOGUE, "c")


def test_missing_labels_file(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="not found"):
        labelled_items(tmp_path / "none.csv", CATALOGUE, "c")


def test_ambiguous_relative_path(tmp_path: Path) -> None:
    catalogue = [Item(1, "/a/x/1.jpg", "h1"), Item(2, "/b/x/1.jpg", "h2")]
    with pytest.raises(TrainingDataError, match="matches 2 indexed files"):
        labelled_items(write(tmp_path, "x/1.jpg,a\n"), catalogue, "c")


def test_too_few() -> None:
    labelled = [Item(i, str(i), str(i), "a" if i < 8 else "b") for i in range(12)]
    check_supervised(labelled)
    with pytest.raises(TrainingDataError, match="at least 2 classes"):
        check_supervised([Item(i, str(i), str(i), "a") for i in range(12)])
    with pytest.raises(TrainingDataError, match="needs at least 10"):
        check_supervised(labelled[:5])
    with pytest.raises(TrainingDataError, match="class 'c' has fewer than 2"):
        check_supervised([*labelled, Item(99, "99", "99", "c")])
    with pytest.raises(TrainingDataError, match="self-supervised training needs at least 20"):
        check_unlabelled(labelled)


def test_split_is_fixed_stratified_and_disjoint() -> None:
    items = [Item(i, str(i), f"h{i}", "ab"[i % 2]) for i in range(40)]
    train, held = split(items)
    assert {i.image_id for i in split(list(reversed(items)))[1]} == {i.image_id for i in held}
    assert not {i.image_id for i in train} & {i.image_id for i in held}
    assert sorted(sum(1 for i in held if i.label == c) for c in "ab") == [3, 3]
