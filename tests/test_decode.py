"""Decoding survives what real folders hold; every failure has a reason."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.decode import decode, open_image, source_size, walk_images
from lookalike.errors import DecodeError

from .conftest import ukbench_images


def _png_bomb(side: int) -> bytes:
    """A tiny PNG that claims side x side pixels (a decompression bomb)."""
    raw = zlib.compress(b"".join(b"\0" + b"\0" * side for _ in range(64)), 9)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def _encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.open(ukbench_images(1)[0]).convert("RGB")


def test_exif_orientation_is_applied(photo: Image.Image) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    data = _encode(photo, "JPEG", exif=exif.tobytes())
    out = decode(data)
    assert out.size == (photo.height, photo.width)


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA", "CMYK", "L", "I;16", "1"])
def test_odd_modes_become_rgb(photo: Image.Image, mode: str) -> None:
    if mode == "I;16":
        arr = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
        img = Image.fromarray(arr).convert("I;16") if arr.dtype != np.uint16 else Image.fromarray(arr)
        data = _encode(img, "PNG")
    else:
        img = photo.convert(mode)
        data = _encode(img, "TIFF" if mode == "CMYK" else "PNG")
    out = decode(data)
    assert out.mode == "RGB" and out.size == photo.size
    assert np.asarray(out).std() > 5  # real content survived, not a blank picture


def test_transparent_pixels_become_white(photo: Image.Image) -> None:
    rgba = photo.convert("RGBA")
    rgba.putalpha(0)
    out = decode(_encode(rgba, "PNG"))
    assert np.asarray(out).min() == 255


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue", "green")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    out = decode(buf.getvalue())
    assert out.getpixel((5, 5))[0] > 200 and out.getpixel((5, 5))[2] < 50


@pytest.mark.parametrize("fmt", ["WEBP", "BMP", "TIFF", "AVIF"])
def test_common_formats(photo: Image.Image, fmt: str) -> None:
    assert decode(_encode(photo, fmt)).size == photo.size


def test_heic_through_pillow_heif(photo: Image.Image) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    heif = pillow_heif.from_pillow(photo)
    buf = io.BytesIO()
    heif.save(buf, quality=80)
    assert decode(buf.getvalue(), suffix=".heic").size == photo.size


def test_jpeg_draft_mode_decodes_big_photos_smaller(photo: Image.Image) -> None:
    big = photo.resize((4000, 3000))
    out = decode(_encode(big, "JPEG"), draft_size=300)
    assert 300 <= min(out.size) < 1500
    assert source_size(out) == (4000, 3000)  # what the catalogue records: the file's size, not the decode's


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_source_size_is_upright_after_reduction(photo: Image.Image, fmt: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter: a 3000x2000 file is a 2000x3000 picture
    out = decode(_encode(photo.resize((3000, 2000)), fmt, exif=exif.tobytes()), draft_size=224)
    assert out.width < out.height and out.height < 3000
    assert source_size(out) == (2000, 3000)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"this is not an image", "not-an-image"),
        (_png_bomb(30000), "too-large"),
    ],
)
def test_bad_bytes_have_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode(data)
    assert err.value.reason == reason


def test_truncated_jpeg_is_refused() -> None:
    data = ukbench_images(1)[0].read_bytes()
    with pytest.raises(DecodeError) as err:
        decode(data[: len(data) // 3])
    assert err.value.reason in ("truncated", "corrupt")


def test_pixel_limit_is_configurable(photo: Image.Image) -> None:
    with pytest.raises(DecodeError) as err:
        decode(_encode(photo, "PNG"), max_pixels=1000)
    assert err.value.reason == "too-large"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads mode-0 files")
def test_unreadable_file(tmp_path: Path) -> None:
    locked = tmp_path / "locked.jpg"
    locked.write_bytes(ukbench_images(1)[0].read_bytes())
    locked.chmod(0)
    with pytest.raises(DecodeError) as err:
        open_image(locked)
    assert err.value.reason == "unreadable"


def test_walk_follows_symlinks_without_looping(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("skip me")
    os.symlink("..", tmp_path / "a" / "up")
    problems: list[tuple[Path, str, str]] = []
    found = list(walk_images([tmp_path], lambda p, r, d: problems.append((p, r, d))))
    assert [p.name for p in found] == ["x.jpg"]
    assert any(r == "symlink-loop" for _, r, _ in problems)
