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


def _serve(app) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="live-server", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_http_ready(base)
    yield base
    server.should_exit = True
    thread.join(15)


@pytest.fixture(scope="module")
def live_server(ukbench_library) -> Iterator[str]:
    from lookalike.server import create_app

    yield from _serve(create_app(ukbench_library))


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


PASTED = (240, 180, 456, 342)  # where _scene puts the object: ukbench00008 (its views are 00008-00011)


def _scene(tmp_path: Path) -> Path:
    """A Flickr8k photo (people, an umbrella: things the detector knows) with a UKBench object pasted in."""
    from ..conftest import FLICKR

    scene = Image.open(sorted(FLICKR.rglob("*.jpg"))[5]).convert("RGB").resize((480, 360))
    obj = Image.open(UKBENCH / "ukbench00008.jpg").convert("RGB")
    w, h = obj.size
    x0, y0, x1, y1 = PASTED
    scene.paste(obj.crop((w // 5, h // 5, w * 4 // 5, h * 4 // 5)).resize((x1 - x0, y1 - y0)), (x0, y0))
    path = tmp_path / "scene.jpg"
    scene.save(path, quality=92)
    return path


def test_drawing_a_box_on_the_query_searches_with_that_region(live_server: str, browser, tmp_path: Path) -> None:
    """Object-aware search (issue 17): a UKBench object pasted into a Flickr8k photo; drag over it."""
    path = _scene(tmp_path)
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

    # "more like this" shows the result's 256-pixel thumbnail: a box drawn on it is sent in the pixels
    # of the indexed picture itself (UKBench photos are 288x216)
    page.click("#results .hit:first-child")
    page.wait_for_function("document.querySelector('#preview').src.includes('/thumbnail') && "
                           "document.querySelector('#preview').complete && "
                           "document.querySelector('#results').dataset.state === 'done'")
    assert page.evaluate("document.querySelector('#preview').naturalWidth") == 256
    r = page.eval_on_selector("#preview", "e => { const b = e.getBoundingClientRect(); "
                                          "return [b.left, b.top, b.width, b.height]; }")
    with page.expect_response(lambda resp: "/api/search" in resp.url) as answer:
        page.mouse.move(r[0] + r[2] * 0.25, r[1] + r[3] * 0.25)
        page.mouse.down()
        page.mouse.move(r[0] + r[2] * 0.75, r[1] + r[3] * 0.75, steps=4)
        page.mouse.up()
    body = answer.value.json()
    x0, y0, x1, y1 = map(int, body["box"].split(","))
    assert abs(x0 - 72) <= 3 and abs(x1 - 216) <= 3 and abs(y0 - 54) <= 3 and abs(y1 - 162) <= 3, body["box"]
    page.close()


def _overlap(a: list[int], b: tuple[int, ...]) -> float:
    """Intersection over union of two boxes."""
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _click_region(page, box: str) -> dict:
    """Click the overlay of `box` with the mouse, where no other overlay covers it; the search it ran."""
    point = page.evaluate("""box => {
        const el = document.querySelector(`#regions .region[data-box="${box}"]`);
        const r = el.getBoundingClientRect();
        for (let fy = 0.5; fy < 1; fy += 0.05) for (const fx of [0.5, 0.3, 0.7, 0.15, 0.85]) {
          for (const y of [r.top + r.height * fy, r.top + r.height * (1 - fy)]) {
            const x = r.left + r.width * fx;
            if (document.elementFromPoint(x, y).closest('.region') === el) return [x, y];
          }
        }
        return null; }""", box)
    assert point, f"overlay {box} is covered everywhere"
    with page.expect_response(lambda resp: "/api/search" in resp.url) as answer:
        page.mouse.click(*point)
    page.wait_for_function("document.querySelector('#results').dataset.state === 'done'")
    return answer.value.json()


def test_objects_are_drawn_over_the_query_and_a_click_searches_with_one(live_server: str, browser,
                                                                        tmp_path: Path) -> None:
    """Object-aware search (issue 17): with `objects` on, the regions found in the query are buttons over it."""
    from lookalike.detect import ssd

    from ..conftest import SHARED

    page = browser.new_page(viewport={"width": 1100, "height": 760})
    page.goto(live_server + "/?collection=uk")
    page.wait_for_selector("#collection option[value='uk']", state="attached")
    page.check("#objects")
    with page.expect_response(lambda resp: "/api/search" in resp.url) as first:
        page.set_input_files("#file", str(_scene(tmp_path)))
    assert first.value.json()["objects"] is True
    page.wait_for_selector("#regions .region")
    regions = page.eval_on_selector_all("#regions .region", """els => els.map(e => {
        const r = e.getBoundingClientRect();
        return {box: e.dataset.box, label: e.dataset.label, rect: [r.left, r.top, r.right, r.bottom]}; })""")
    frame = page.eval_on_selector("#preview", "e => { const r = e.getBoundingClientRect(); "
                                               "return [r.left, r.top, r.right, r.bottom]; }")
    for r in regions:  # drawn where they are: the preview is the scene scaled down
        x0, y0, x1, y1 = map(int, r["box"].split(","))
        sx = (frame[2] - frame[0]) / 480
        assert abs(r["rect"][0] - (frame[0] + x0 * sx)) < 2 and abs(r["rect"][2] - (frame[0] + x1 * sx)) < 2
        assert r["rect"][3] <= frame[3] + 1
    if (SHARED / "models" / ssd.TFLITE_NAME).is_file():
        assert "person" in {r["label"] for r in regions}  # the detector's boxes carry their class
    boxes = [list(map(int, r["box"].split(","))) for r in regions]
    on_object = max(boxes, key=lambda b: _overlap(b, PASTED))
    elsewhere = min(boxes, key=lambda b: _overlap(b, PASTED))
    assert _overlap(on_object, PASTED) > 0.3 and _overlap(elsewhere, PASTED) < 0.05, boxes

    # click the overlay on the pasted object: a region search with exactly that box finds the object
    body = _click_region(page, ",".join(map(str, on_object)))
    assert body["box"] == ",".join(map(str, on_object)) and "objects" not in body
    assert int(result_names(page)[0][7:12]) // 4 == 2  # a view of the pasted object (ukbench00008-11)
    assert "region" in page.text_content("#status") and page.is_visible("#box")
    assert page.get_attribute(f"#regions .region[data-box='{body['box']}']", "class").split().count("selected") == 1
    page.locator(".query").screenshot(path=str(tmp_path / "objects.png"))  # for the docs: found by its overlay
    _save_small(tmp_path / "objects.png", DOCS / "screenshot-objects.png")

    # another overlay, away from the object: the results change to that region's
    body = _click_region(page, ",".join(map(str, elsewhere)))
    assert body["box"] == ",".join(map(str, elsewhere))
    assert int(result_names(page)[0][7:12]) // 4 != 2

    # the selected overlay again: back to the whole picture (with its objects)
    body = _click_region(page, ",".join(map(str, elsewhere)))
    assert body.get("objects") is True and "box" not in body
    assert not page.is_visible("#box")
    page.uncheck("#objects")  # objects off: the overlays go
    page.wait_for_function("document.querySelectorAll('#regions .region').length === 0")
    page.close()


@pytest.fixture(scope="module")
def review_server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[tuple[str, Path]]:
    """A live server over a fresh library: UKBench photos 0-7 and two edited copies (tests/server/conftest.py),
    with an API key and the photos' folder as its allowed root."""
    from lookalike.server import create_app

    from .conftest import review_app

    lib, folder, settings = review_app(tmp_path_factory.mktemp("review-page"), model_cache)
    yield from ((base, folder) for base in _serve(create_app(lib, settings=settings)))
    lib.close()


def _groups(page) -> dict[frozenset[str], str]:
    """The groups on the page: their pictures' file names -> the group's CSS path."""
    names = page.eval_on_selector_all("#groups .group", "els => els.map(g => [...g.querySelectorAll('.member')]"
                                                        ".map(m => m.querySelector('.name').textContent))")
    return {frozenset(n): f"#groups .group:nth-child({i + 1})" for i, n in enumerate(names)}


def _find_copies(page) -> dict[frozenset[str], str]:
    page.click("#find-copies")
    page.wait_for_selector("#groups[data-state='done']", state="attached")
    return _groups(page)


def test_reviewing_copies_keep_skip_and_not_duplicates(review_server, browser, tmp_path: Path) -> None:
    """Copies (issue 15): the review view runs a dupes job, shows each group side by side with its evidence;
    skip leaves a group for the next run, "not duplicates" is remembered, keep moves the copy to the trash."""
    from .conftest import API_KEY

    base, folder = review_server
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    asked: list[str] = []
    page.on("dialog", lambda d: (asked.append(d.message), d.accept(API_KEY)))
    page.goto(base + "/?collection=review#copies")
    page.wait_for_selector("#collection option[value='review']", state="attached")
    assert page.is_visible("#copies-view") and not page.is_visible("#search-view")
    groups = _find_copies(page)
    first, second = frozenset({"copy_of_0.jpg", "ukbench00000.jpg"}), frozenset({"copy_of_4.jpg", "ukbench00004.jpg"})
    assert set(groups) == {first, second}, groups  # the other photos of the two objects are left alone
    page.wait_for_function("[...document.querySelectorAll('#groups img')].every(i => i.complete && i.naturalWidth)")
    for names, group in groups.items():
        suggested = page.text_content(f"{group} .member.suggested .name")
        assert suggested == min(names, key=lambda n: not n.startswith("ukbench"))  # the original: more pixels
        assert page.is_checked(f"{group} .member.suggested input")
        meta = page.eval_on_selector_all(f"{group} .meta", "els => els.map(e => e.textContent)")
        assert any("288×216" in m for m in meta) and all("KiB" in m for m in meta), meta
        evidence = page.text_content(f"{group} .evidence")
        assert "score 0.9" in evidence and "decided by geometry" in evidence and "inliers" in evidence, evidence
    page.locator("#copies-view").screenshot(path=str(tmp_path / "copies.png"))  # for the docs
    _save_small(tmp_path / "copies.png", DOCS / "screenshot-copies.png")

    page.click(f"{groups[first]} .skip")
    assert page.get_attribute(groups[first], "data-outcome") == "skipped"
    assert not page.is_visible(f"{groups[first]} .members")
    page.click(f"{groups[second]} .not-dup")  # a write: the page asks for the server's API key once
    page.wait_for_selector(f"{groups[second]}[data-outcome='not-duplicates']")
    assert len(asked) == 1 and "API key" in asked[0]

    groups = _find_copies(page)  # skipped: back; not duplicates: remembered, never grouped again
    assert set(groups) == {first}, groups
    group = groups[first]
    page.click(f"{group} .keep")  # the plan first: nothing moves yet
    page.wait_for_selector(f"{group} .confirm")
    assert "copy_of_0.jpg → the library's trash" in page.text_content(f"{group} .outcome")
    assert (folder / "copy_of_0.jpg").is_file()
    page.click(f"{group} .confirm")
    page.wait_for_selector(f"{group}[data-outcome='kept']")
    assert "lookalike dupes --undo" in page.text_content(f"{group} .outcome")
    assert not (folder / "copy_of_0.jpg").exists() and (folder / "ukbench00000.jpg").is_file()
    assert page.get_attribute(f"{group} .member.gone", "data-id") is not None

    assert _find_copies(page) == {}
    assert "no copies among 9 pictures" in page.text_content("#copies-status")
    page.close()
