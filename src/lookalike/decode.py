"""From a file (or bytes) to an RGB picture, surviving whatever real folders hold.

Every failure becomes a `DecodeError` with a short reason tag, so ingest can skip, count and report it
without stopping the batch. Phone (HEIC/AVIF) and camera RAW files are read through well-kept plugins.
"""

from __future__ import annotations

import io
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import Busy, DecodeError
from .roots import is_within, outside_detail

try:  # HEIC/HEIF (and AVIF on older Pillow) from phones
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - optional at run time
    pillow_heif = None

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-picture
Image.MAX_IMAGE_PIXELS = None  # `decode` applies its own, configurable limit before any pixel is decoded

RAW_EXTENSIONS = {".cr2", ".cr3", ".nef", ".arw", ".dng", ".orf", ".rw2", ".raf", ".pef", ".srw"}
IMAGE_EXTENSIONS = {
    ".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp",
    ".heic", ".heif", ".avif",
} | RAW_EXTENSIONS

DEFAULT_MAX_PIXELS = 120_000_000
ORIENTATION_TAG = 0x0112  # EXIF orientation
SOURCE_SIZE = "lookalike_source_size"  # Image.info key: the file's upright (width, height)

def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def walk_images(
    roots: list[Path], on_error: Callable[[Path, str, str], None] | None = None,
    within: list[Path] | None = None,
) -> Iterator[Path]:
    """Yield image files under `roots` (files or folders), sorted, following symlinks without looping.

    Unreadable folders and symlink loops are reported through `on_error(path, reason, detail)`. With
    `within` (resolved allowed roots), a root, folder or file that resolves outside them (a symlink
    pointing out) is not followed but reported as `outside-root`.
    """
    seen_dirs: set[tuple[int, int]] = set()

    def report(path: Path, reason: str, detail: str) -> None:
        if on_error:
            on_error(path, reason, detail)

    def inside(path: Path) -> bool:
        if within is None:
            return True
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on older Pythons
            report(path, "unreadable", str(exc))
            return False
        if is_within(resolved, within):
            return True
        report(path, "outside-root", outside_detail(path, resolved))
        return False

    def visit(folder: Path) -> Iterator[Path]:
        try:
            st = folder.stat()
        except OSError as exc:
            report(folder, "unreadable", exc.strerror or str(exc))
            return
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            report(folder, "symlink-loop", "folder already visited")
            return
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            report(folder, "unreadable", exc.strerror or str(exc))
            return
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
                is_link = entry.is_symlink()
            except OSError as exc:
                report(path, "unreadable", exc.strerror or str(exc))
                continue
            if is_link and (is_dir or is_image_name(path)) and not inside(path):
                continue
            if is_dir:
                if not entry.name.startswith("."):
                    yield from visit(path)
            elif is_image_name(path):
                try:
                    if not stat.S_ISREG(entry.stat(follow_symlinks=True).st_mode):
                        continue
                except OSError as exc:  # dangling symlink or symlink loop on a file
                    report(path, "unreadable", exc.strerror or str(exc))
                    continue
                yield path

    for root in roots:
        root = Path(root).expanduser()
        if not inside(root):
            continue
        if root.is_dir():
            yield from visit(root)
        elif root.is_file():
            if is_image_name(root):
                yield root
            else:
                report(root, "not-an-image", "unsupported file extension")
        else:
            report(root, "missing", "no such file or folder")


def read_bytes(path: Path, max_bytes: int) -> bytes:
    """Read a file, mapping OS errors onto decode reasons."""
    return read_file(path, max_bytes)[0]


def read_file(path: Path, max_bytes: int) -> tuple[bytes, os.stat_result]:
    """A file's bytes and the stat of the very file they were read from (fstat of the open file, so the
    size and mtime a catalogue records describe these bytes even if the path is swapped meanwhile)."""
    try:
        with path.open("rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_size > max_bytes:
                raise DecodeError("too-large", f"{st.st_size} bytes is over the {max_bytes} byte limit")
            return fh.read(), st
    except PermissionError as exc:
        raise DecodeError("unreadable", "permission denied") from exc
    except OSError as exc:
        raise DecodeError("unreadable", exc.strerror or str(exc)) from exc


def _raw_preview(data: bytes) -> Image.Image:
    """Camera RAW: use the embedded JPEG preview (fast, already developed by the camera)."""
    import rawpy

    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            try:
                thumb = raw.extract_thumb()
            except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
                return Image.fromarray(raw.postprocess(half_size=True, use_camera_wb=True))
            if thumb.format == rawpy.ThumbFormat.JPEG:
                img = Image.open(io.BytesIO(thumb.data))
                img.load()
                return img
            return Image.fromarray(thumb.data)
    except rawpy.LibRawError as exc:
        raise DecodeError("corrupt", f"RAW file: {exc}") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """Normalise any mode (palette, alpha, CMYK, 16-bit, float) to 8-bit RGB on a white background."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(scaled.astype("uint8"), "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


class DecodeMemory:
    """A semaphore counted in bytes: the decodes of one process together hold at most `budget` bytes of
    pixels, whatever the number of threads asking. A decode bigger than the whole budget runs alone."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int, wait: float | None = None) -> Iterator[None]:
        n = max(1, min(int(nbytes), self.budget))
        deadline = None if wait is None else time.monotonic() + wait
        with self._cond:
            while self.used + n > self.budget:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise Busy(f"the server is decoding as many images as its decode memory allows "
                               f"({self.budget // MiB} MiB); try again in a moment", retry_after=1)
                self._cond.wait(remaining)
            self.used += n
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


def default_decode_budget() -> int:
    """1/8 of the machine's memory, between 256 MiB and 1 GiB."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 8 * 1024 * MiB
    return max(256 * MiB, min(1024 * MiB, total // 8))


MiB = 1024 * 1024
MEMORY = DecodeMemory(default_decode_budget())
REDUCE_ABOVE = 4_000_000  # pixels: bigger pictures are box-reduced right after loading (see `decode`)
TRIM_ABOVE = 64 * MiB  # after a decode this big, hand freed memory back to the OS
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}  # else 4 (Pillow's RGB too)
_REDUCIBLE = {"L", "LA", "La", "RGB", "RGBA", "RGBa", "I", "F"}
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def configure_memory(budget_mb: int) -> None:
    """Set this process's decode memory (MiB; 0: the default), and make freed image memory go back to the
    OS (glibc would otherwise keep big freed blocks in its heaps: RSS stays at the peak)."""
    MEMORY.budget = budget_mb * MiB if budget_mb > 0 else default_decode_budget()
    _tune_malloc()


def _reduce_factor(size: tuple[int, int], draft_size: int | None) -> int:
    width, height = size
    if not draft_size or width * height <= REDUCE_ABOVE:
        return 1
    return max(1, min(width, height) // (2 * draft_size))


def _decode_cost(img: Image.Image, draft_size: int | None) -> int:
    """Bytes a decode of `img` holds at its peak: the full buffer, a converted copy if the mode can't be
    reduced, and the (small, copied a few times) result."""
    width, height = img.size
    full = width * height * _PIXEL_BYTES.get(img.mode, 4)
    factor = _reduce_factor(img.size, draft_size)
    if factor == 1:
        return full + (0 if img.mode == "RGB" else 3 * width * height * 4)
    convert = 0 if img.mode in _REDUCIBLE else width * height * 4
    return full + convert + 4 * (width // factor) * (height // factor) * 4


def _reduce_big(img: Image.Image, draft_size: int | None) -> Image.Image | None:
    """A loaded big picture box-reduced (and turned upright) before anything copies it; None if small."""
    factor = _reduce_factor(img.size, draft_size)
    if factor < 2:
        return None
    orientation = img.getexif().get(0x0112, 1)
    if img.mode not in _REDUCIBLE:
        img = to_rgb(img)
    small = img.reduce(factor)
    method = _TRANSPOSE.get(orientation)
    return small.transpose(method) if method else small


_MALLOC_TUNED = False


def _libc() -> Any:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def _tune_malloc() -> None:
    """glibc: a fixed mmap threshold (1 MiB), so Pillow's 16 MiB image blocks are mmapped and unmapped
    on free instead of the threshold rising to their size and the heap keeping them."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED or not sys.platform.startswith("linux"):
        return
    _MALLOC_TUNED = True
    try:
        libc = _libc()
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(-3, 1024 * 1024)  # M_MMAP_THRESHOLD
    except OSError:
        pass


def _malloc_trim() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = _libc()
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass


def decode(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    suffix: str = "",
    wait: float | None = None,
) -> Image.Image:
    """Decode image bytes to an upright RGB picture.

    `draft_size`: the smallest side the caller needs; big JPEGs are decoded at a reduced scale (DCT
    scaling), which is several times faster for phone photos, and other big pictures (PNG has no draft
    mode) are box-reduced right after loading, to no less than twice that side, before any copy is made.
    Every decode holds its pixel memory from `MEMORY` (see `DecodeMemory`); `wait`: seconds to wait for
    it before raising Busy (None: as long as it takes). Raises DecodeError.
    """
    if not data:
        raise DecodeError("empty", "zero-byte file")
    if suffix.lower() in RAW_EXTENSIONS:
        img = _raw_preview(data)
    else:
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exc:
            raise DecodeError("not-an-image", "content is not a known image format") from exc
        except Image.DecompressionBombError as exc:
            raise DecodeError("too-large", str(exc)) from exc
        except OSError as exc:
            raise DecodeError("corrupt", str(exc)) from exc
    width, height = img.size
    if width * height > max_pixels:
        raise DecodeError("too-large", f"{width}x{height} is over the {max_pixels} pixel limit")
    if width == 0 or height == 0:
        raise DecodeError("corrupt", "image has no pixels")
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # animated GIF/WebP/APNG: the first frame stands for the file
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        cost = _decode_cost(img, draft_size)
        with MEMORY.hold(cost, wait):
            img.load()
            # after load: a PNG's getexif() loads the whole picture itself (its eXIf chunk may follow the pixels)
            transposed = img.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8)  # turned a quarter: sides swap
            upright_size = (height, width) if transposed else (width, height)
            reduced = _reduce_big(img, draft_size)
            img = reduced if reduced is not None else (ImageOps.exif_transpose(img) or img)
            out = to_rgb(img)
            out.info[SOURCE_SIZE] = upright_size  # the file's own size: draft and reduction shrink `out`
            del img, reduced  # the full-size buffer goes before the memory is handed back
        if cost >= TRIM_ABOVE:
            _malloc_trim()
        return out
    except DecodeError:
        raise
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise DecodeError(reason, str(exc)) from exc
    except (ValueError, SyntaxError, EOFError, IndexError, MemoryError) as exc:
        raise DecodeError("corrupt", str(exc) or type(exc).__name__) from exc


def source_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of the picture in its file, upright, even where `decode` gave a reduced one."""
    width, height = image.info.get(SOURCE_SIZE, image.size)
    return int(width), int(height)


def open_image(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None,
               max_bytes: int = 200 * 1024 * 1024) -> Image.Image:
    """Read and decode one file; see `decode`."""
    return decode(read_bytes(path, max_bytes), max_pixels=max_pixels, draft_size=draft_size,
                  suffix=path.suffix)


# Content sniffing: the first bytes decide, never the file name or the client's Content-Type.
_MAGIC: list[tuple[str, Callable[[bytes], bool]]] = [
    ("jpeg", lambda b: b[:3] == b"\xff\xd8\xff"),
    ("png", lambda b: b[:8] == b"\x89PNG\r\n\x1a\n"),
    ("gif", lambda b: b[:6] in (b"GIF87a", b"GIF89a")),
    ("webp", lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP"),
    ("bmp", lambda b: b[:2] == b"BM"),
    ("tiff", lambda b: b[:4] in (b"II*\x00", b"MM\x00*")),
    ("heif", lambda b: b[4:8] == b"ftyp" and b[8:12] in (b"heic", b"heix", b"hevc", b"hevx", b"mif1",
                                                          b"msf1", b"heim", b"heis", b"avif", b"avis")),
]
MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp",
               "bmp": "image/bmp", "tiff": "image/tiff", "heif": "image/heif"}


def sniff(data: bytes) -> str | None:
    """The image format named by the content's magic bytes, or None."""
    return next((name for name, test in _MAGIC if test(data[:16])), None)


def decode_upload(data: bytes, *, max_bytes: int, max_pixels: int, draft_size: int | None = None,
                  wait: float | None = None) -> Image.Image:
    """Decode bytes a client sent: size, emptiness and content type are checked before any decoding, and
    every failure is a DecodeError whose message is one sentence a user can act on."""
    if len(data) > max_bytes:
        raise DecodeError("too-large", message=f"upload of {len(data)} bytes is over the {max_bytes} byte limit")
    if not data:
        raise DecodeError("empty", message="the upload is empty; send the image bytes in the `file` field")
    if sniff(data) is None:
        raise DecodeError("not-an-image", message="the upload is not an image (JPEG, PNG, GIF, WebP, BMP, TIFF, "
                                                  "HEIC or AVIF, judged by its content)")
    try:
        return decode(data, max_pixels=max_pixels, draft_size=draft_size, wait=wait)
    except DecodeError as exc:
        raise exc.reworded("cannot read the image: ") from None
