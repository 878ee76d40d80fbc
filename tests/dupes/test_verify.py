"""verify.py: edited copies are duplicates, different photos of one object are not, scores in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.dupes import verify


def rgb(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


@pytest.mark.parametrize("edit", ["crop", "scale", "rot90", "mirror_grey", "tilt_border"])
def test_edited_copy_is_a_duplicate(copies: dict[str, tuple[Path, Path]], edit: str) -> None:
    copy, original = copies[edit]
    c = verify.compare(rgb(copy), rgb(original))
    assert c.verdict == "duplicate", c.to_dict()
    assert 0.5 <= c.score <= 1.0
    assert c.check in ("geometry", "phash")


def test_mirror_and_turn_are_reported(copies: dict[str, tuple[Path, Path]]) -> None:
    assert verify.compare(rgb(copies["mirror_grey"][0]), rgb(copies["mirror_grey"][1])).mirrored
    c = verify.compare(rgb(copies["rot90"][1]), rgb(copies["rot90"][0]))
    assert abs(abs(c.rotation) - 90) < 3 and not c.mirrored


def test_comparison_is_symmetric(copies: dict[str, tuple[Path, Path]]) -> None:
    copy, original = copies["crop"]
    a, b = verify.compare(rgb(copy), rgb(original)), verify.compare(rgb(original), rgb(copy))
    assert a.score == pytest.approx(b.score) and a.inliers == b.inliers


def test_other_photos_of_one_object_are_not_duplicates(originals: list[Path]) -> None:
    """Four objects x 4 photos: none of the 24 same-object pairs is called a copy."""
    feats = [verify.extract(rgb(p)) for p in originals]
    verdicts = [verify.compare_features(feats[4 * g + i], feats[4 * g + j]).verdict
                for g in range(4) for i in range(4) for j in range(i + 1, 4)]
    assert verdicts.count("duplicate") == 0, verdicts


def test_unrelated_pictures_are_different_and_similar_needs_a_close_vector(originals: list[Path]) -> None:
    a, b = rgb(originals[0]), rgb(originals[12])
    v = np.ones(4, np.float32) / 2
    assert verify.compare(a, b).verdict == "different"
    assert verify.compare(a, b, v, v).verdict == "similar"  # cosine 1.0 but not a copy
    assert 0.0 <= verify.compare(a, b).score < 0.5


def test_flat_and_tiny_pictures_do_not_crash() -> None:
    flat = Image.new("RGB", (40, 30), (120, 120, 120))
    tiny = Image.new("RGB", (3, 2), (0, 0, 0))
    c = verify.compare(flat, tiny)
    assert 0.0 <= c.score <= 1.0
    assert verify.compare(flat, flat).verdict == "duplicate"  # same picture: pHash decides
