"""The web page in a real browser: Debian's chromium driven by Playwright against a live server.

Needs /usr/bin/chromium (`apt-get install chromium`) and the `playwright` Python package; it uses the
system chromium (no `playwright install`). The server runs on 127.0.0.1 over UKBench's first 1000
images, indexed once per test session.
"""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from ..conftest import UKBENCH
from .conftest import wait_http_ready

CHROMIUM = Path("/usr/bin/chromium")
DOCS = Path(__file__).resolve().parents[2] / "docs"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

if not CHROMIUM.exists():
    pytest.skip("browser test needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser test needs the `playwright` package")
uvicorn = pytest.importorskip("uvicorn", reason="browser test needs uvicorn (the server extra)")


@pytest.fixture(scope="module")
def live_server(ukbench_library) -> Iterator[str]:
    from lookalike.server import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(ukbench_library), host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="live-server", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_http_ready(base)
    yield base
    server.should_exit = True
    thread.join(15)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield b
        b.close()


def result_names(page) -> list[str]:
    paths = page.eval_on_selector_all("#results .hit", "els => els.map(e => e.dataset.path)")
    return [Path(p).name for p in paths]


def test_uploading_a_photo_shows_the_other_views_first(live_server: str, browser, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    page.goto(live_server + "/")
    page.wait_for_selector("#collection option[value='uk']", state="attached")
    assert page.input_value("#collection") == "uk"
    assert "1000 images" in page.text_content("#stats")
    assert page.is_visible("#text-form")  # the default model searches by text (offline fallback)
    page.set_input_files("#file", str(UKBENCH / "ukbench00000.jpg"))
    page.wait_for_selector("#results[data-state='done'] .hit")
    top4 = result_names(page)[:4]
    assert {"ukbench00001.jpg", "ukbench00002.jpg", "ukbench00003.jpg"} <= set(top4), top4
    page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth)")
    shot = tmp_path / "screenshot.png"
    page.screenshot(path=str(shot))
    DOCS.mkdir(exist_ok=True)
    _save_small(shot, DOCS / "screenshot.png")

    # click a result: "more like this" searches by its id, and the clicked image is not among the results
    second = page.eval_on_selector("#results .hit:nth-child(2)", "e => e.dataset.id")
    page.click("#results .hit:nth-child(2)")
    page.wait_for_function(f"document.querySelector('#results').dataset.state === 'done' && "
                           f"![...document.querySelectorAll('#results .hit')].some(e => e.dataset.id === '{second}')")
    assert "ukbench00000.jpg" in result_names(page)[:4]
    page.close()


def test_any_rotation_box_finds_a_sideways_copy(live_server: str, browser, tmp_path: Path) -> None:
    sideways = tmp_path / "sideways.jpg"
    Image.open(UKBENCH / "ukbench00000.jpg").transpose(Image.Transpose.ROTATE_90).save(sideways, quality=95)
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    page.goto(live_server + "/?collection=uk")
    page.wait_for_selector("#collection option[value='uk']", state="attached")
    page.set_input_files("#file", str(sideways))
    page.wait_for_selector("#results[data-state='done'] .hit")
    with page.expect_response(lambda r: "/api/search" in r.url) as answer:
        page.check("#rotations")  # ticking it re-runs the search, in four orientations
    assert answer.value.json()["rotation_invariant"] is True
    page.wait_for_function("document.querySelector('#results').dataset.state === 'done'")
    top4 = result_names(page)[:4]
    assert {f"ukbench0000{i}.jpg" for i in range(4)} == set(top4), top4
    page.close()


def test_page_fits_a_phone_screen(live_server: str, browser) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    page.goto(live_server + "/?collection=uk")
    page.wait_for_selector("#collection option[value='uk']", state="attached")
    page.set_input_files("#file", str(UKBENCH / "ukbench00004.jpg"))
    page.wait_for_selector("#results[data-state='done'] .hit")
    assert result_names(page)[0] == "ukbench00004.jpg"
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"page is {overflow}px wider than a phone screen"
    page.close()


def test_a_non_image_shows_a_clear_error(live_server: str, browser, tmp_path: Path) -> None:
    fake = tmp_path / "notes.jpg"
    fake.write_text("not really a picture")
    page = browser.new_page()
    page.goto(live_server + "/")
    page.wait_for_selector("#collection option[value='uk']", state="attached")
    page.set_input_files("#file", str(fake))
    page.wait_for_selector("#results[data-state='error']", state="attached")
    assert "not an image" in page.text_content("#status")
    page.close()


def _save_small(source: Path, target: Path) -> None:
    """Keep the committed screenshot small: 256-colour PNG."""
    try:
        from PIL import Image

        with Image.open(source) as img:
            img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    except Exception:  # noqa: BLE001 - the raw screenshot is still fine
        shutil.copy(source, target)


def test_drawing_a_box_on_the_query_searches_with_that_region(live_server: str, browser, tmp_path: Path) -> None:
    """Object-aware search (issue 17): a UKBench object pasted into a Flickr8k photo; drag over it."""
    from ..conftest import FLICKR

    scene = Image.open(sorted(FLICKR.rglob("*.jpg"))[5]).convert("RGB").resize((480, 360))
    obj = Image.open(UKBENCH / "ukbench00008.jpg").convert("RGB")
    w, h = obj.size
    scene.paste(obj.crop((w // 5, h // 5, w * 4 // 5, h * 4 // 5)).resize((216, 162)), (240, 180))
    path = tmp_path / "scene.jpg"
    scene.save(path, quality=92)
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    page.goto(live_server + "/?collection=uk")
    page.wait_for_selector("#collection option[value='uk']", state="attached")
    page.set_input_files("#file", str(path))
    page.wait_for_selector("#results[data-state='done'] .hit")
    page.wait_for_function("document.querySelector('#preview').naturalWidth > 0")
    r = page.eval_on_selector("#preview", "e => { const b = e.getBoundingClientRect(); "
                                          "return [b.left, b.top, b.width, b.height]; }")
    sx, sy = r[2] / 480, r[3] / 360
    with page.expect_response(lambda resp: "/api/search" in resp.url) as answer:
        page.mouse.move(r[0] + 242 * sx, r[1] + 182 * sy)
        page.mouse.down()
        page.mouse.move(r[0] + 380 * sx, r[1] + 290 * sy, steps=4)
        page.mouse.move(r[0] + 454 * sx, r[1] + 340 * sy, steps=4)
        page.mouse.up()
    body = answer.value.json()
    x0, y0, x1, y1 = map(int, body["box"].split(","))
    assert abs(x0 - 242) <= 4 and abs(y1 - 340) <= 4
    assert page.is_visible("#box")
    page.wait_for_function("document.querySelector('#results').dataset.state === 'done'")
    assert int(result_names(page)[0][7:12]) // 4 == 2  # a view of the pasted object (ukbench00008-11)
    page.close()
