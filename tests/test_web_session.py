"""A search session in a real browser (Debian's chromium, playwright, `clip-branches serve` on
127.0.0.1): labels belong to the search that started them, a reload or a link shows what was on
screen, bulk labelling never overwrites a label, every change can be undone, errors never
replace the grid. Screenshots go to test-output/."""

from __future__ import annotations

from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")
OUT = Path(__file__).resolve().parent.parent / "test-output"


def _open(browser, url, errors, width=1280, height=900):
    context = browser.new_context(viewport={"width": width, "height": height})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(url)
    return context, pg


def _search(pg, text: str) -> None:
    pg.fill("#q", text)
    pg.press("#q", "Enter")
    pg.wait_for_function(
        "t => document.querySelector('.result') && document.querySelector('.result').dataset.kind === 'search'"
        " && new URL(location.href).searchParams.get('q') === t",
        arg=text,
    )


def _count(pg) -> int:
    return int(pg.inner_text("#result-count").replace(",", ""))


def _ids(pg, selector="#grid .thumb") -> list[str]:
    return pg.locator(selector).evaluate_all("els => els.map(e => e.dataset.id)")


def _refine(pg) -> None:
    before = pg.get_attribute(".result", "data-token") if pg.locator(".result").count() else None
    pg.click("#refine-button")
    pg.wait_for_function(
        "t => { const r = document.querySelector('.result'); return r && r.dataset.kind === 'refine' && r.dataset.token !== t; }",
        arg=before,
    )


def test_a_new_query_asks_whether_to_keep_the_labels(page):
    _search(page, "sandal")
    sandals = _ids(page)[:3]
    for i in range(3):
        page.locator("#grid .thumb").nth(i).click()
    _refine(page)
    sandal_total = _count(page)
    page.fill("#q", "ankle boot")
    page.press("#q", "Enter")
    page.wait_for_selector("#new-query[open]")
    assert "3 labels" in page.inner_text("#new-query")
    page.click("#cancel-query")  # nothing happens: the fine-tune stays
    assert page.locator("#new-query[open]").count() == 0 and _count(page) == sandal_total
    page.press("#q", "Enter")
    page.click("#new-session")
    page.wait_for_function("() => document.querySelector('.result').dataset.kind === 'search'")
    assert page.inner_text("#label-counts") == "0 positive, 0 negative"
    # labelling boots now trains on boots alone: no sandal carried over
    page.locator("#grid .thumb").nth(0).click()
    page.locator("#grid .thumb").nth(1).click()
    _refine(page)
    assert "2 positive, 0 negative labels" in page.inner_text("#stats")
    # the old session is a click away, with its labels and its result
    assert "3 labels" in page.inner_text("#previous-session") and "sandal" in page.inner_text(
        "#previous-session"
    )
    page.click("#previous-session")
    page.wait_for_function(
        "n => document.querySelector('#result-count').innerText.replace(/,/g, '') == n", arg=str(sandal_total)
    )
    assert page.inner_text("#label-counts") == "3 positive, 0 negative"
    assert sorted(_ids(page, "#tray-items li")) == sorted(sandals)
    # keeping the labels for a new search keeps them
    page.fill("#q", "sneaker")
    page.press("#q", "Enter")
    page.click("#keep-labels")
    page.wait_for_function("() => document.querySelector('.result').dataset.kind === 'search'")
    assert page.inner_text("#label-counts") == "3 positive, 0 negative"


def test_fine_tune_waits_for_a_positive_and_errors_leave_the_grid(page):
    assert page.is_disabled("#refine-button")
    _search(page, "trouser")
    thumbs = page.locator("#grid .thumb")
    thumbs.nth(0).click()
    thumbs.nth(0).click()  # negative
    assert page.is_disabled("#refine-button")
    thumbs.nth(1).click()
    assert page.is_enabled("#refine-button")
    shown = _ids(page)
    page.fill("#q", "x" * 5000)  # longer than a query may be: said so, never cut silently
    page.press("#q", "Enter")
    page.click("#keep-labels")
    page.wait_for_selector("#messages .error")
    assert "5000" in page.inner_text("#messages .error").replace(",", "")
    assert _ids(page) == shown
    page.fill("#q", "trouser")
    page.press("#q", "Enter")
    page.wait_for_function("() => !document.querySelector('#messages .error')")


def test_a_reload_shows_the_same_screen_without_recomputing(page):
    _search(page, "bag")
    page.click("#all-positive")
    page.select_option("#model", "branch")
    page.fill("#sampled-negatives", "300")
    page.fill("#negative-weight", "7")
    _refine(page)
    total, token = _count(page), page.get_attribute(".result", "data-token")
    assert total > 60
    page.click("#load-more button")
    page.wait_for_function("n => document.querySelectorAll('#grid .thumb').length >= n", arg=min(total, 120))
    shown = _ids(page)
    page.locator("#grid .thumb").nth(0).click()  # labels change after the fine-tune...
    page.reload()
    page.wait_for_selector(".result[data-kind=refine]")
    # ...and the result shown is the one that was on screen, not a new fine-tune
    assert page.get_attribute(".result", "data-token") == token and _count(page) == total
    assert _ids(page) == shown
    assert page.input_value("#q") == "bag" and page.input_value("#model") == "branch"
    assert page.input_value("#sampled-negatives") == "300" and page.input_value("#negative-weight") == "7"
    assert page.inner_text("#neg-out") == "300" and page.inner_text("#weight-out") == "7"
    assert page.inner_text("#label-counts") == "59 positive, 1 negative"  # the labels as they are now


def test_a_link_reproduces_the_screen_in_a_new_browser(browser, server, page):
    _search(page, "shirt")
    for i in range(4):
        page.locator("#grid .thumb").nth(i).click()
    page.locator("#grid .thumb").nth(5).click()
    page.locator("#grid .thumb").nth(5).click()
    page.select_option("#model", "branch")
    _refine(page)
    total, link = _count(page), page.url
    labelled = sorted(_ids(page, "#tray-items li"))
    errors: list[str] = []
    context, other = _open(browser, link, errors)
    try:
        other.wait_for_selector(".result[data-kind=refine]")
        assert _count(other) == total and other.input_value("#model") == "branch"
        assert other.input_value("#q") == "shirt"
        assert other.inner_text("#label-counts") == "4 positive, 1 negative"
        assert sorted(_ids(other, "#tray-items li")) == labelled
    finally:
        context.close()
    assert errors == []
    # a link whose result the server no longer keeps runs the fine-tune again, with its labels
    stale = link.replace(f"result={page.get_attribute('.result', 'data-token')}", "result=gone")
    context, other = _open(browser, stale, errors)
    try:
        other.wait_for_selector(".result[data-kind=refine]")
        assert _count(other) == total
    finally:
        context.close()
    assert errors == []


def test_an_image_search_survives_a_reload(page, tmp_path):
    from PIL import Image

    Image.new("L", (28, 28), 200).save(tmp_path / "q.png")
    _search(page, "coat")
    page.set_input_files("#image-file", str(tmp_path / "q.png"))
    page.click("#image-button")
    page.wait_for_selector(".result[data-kind=image]")
    shown = _ids(page)
    page.reload()
    page.wait_for_selector(".result[data-kind=image]")
    assert _ids(page) == shown and "uploaded image" in page.inner_text("#stats")


def test_undo_ranges_and_the_tray(page):
    _search(page, "pullover")
    thumbs = page.locator("#grid .thumb")
    ids = _ids(page)
    thumbs.nth(2).click()
    thumbs.nth(2).click()  # negative
    page.click("#all-positive")
    assert page.inner_text("#label-counts") == "59 positive, 1 negative"
    page.keyboard.press("Control+z")  # the whole "All positive" goes at once
    assert page.inner_text("#label-counts") == "0 positive, 1 negative"
    page.click("#undo")
    page.click("#undo")
    assert page.inner_text("#label-counts") == "0 positive, 0 negative" and page.is_disabled("#undo")
    # shift-click labels a range as its first image
    thumbs.nth(4).click()
    thumbs.nth(9).click(modifiers=["Shift"])
    assert [
        t for t in ids[4:10] if "pos" in page.get_attribute(f'#grid .thumb[data-id="{t}"]', "class")
    ] == ids[4:10]
    assert page.inner_text("#label-counts") == "6 positive, 0 negative"
    # the tray lists them; removing one there unlabels it in the grid
    assert sorted(_ids(page, "#tray-items li")) == sorted(ids[4:10])
    page.click(f'#tray-items .tray-remove[data-id="{ids[5]}"]')
    assert "pos" not in page.get_attribute(f'#grid .thumb[data-id="{ids[5]}"]', "class")
    assert page.inner_text("#label-counts") == "5 positive, 0 negative"
    # labels are marked by a sign too, not by colour alone
    mark = page.eval_on_selector(
        f'#grid .thumb[data-id="{ids[4]}"]', "e => getComputedStyle(e, '::after').content"
    )
    assert "✓" in mark


def test_paging_to_the_end_marks_the_end(page):
    _search(page, "sandal")
    page.click("#all-positive")
    page.select_option("#model", "branch")
    _refine(page)
    total = _count(page)
    while page.locator("#load-more").count():
        page.locator("#load-more button").scroll_into_view_if_needed()  # infinite scroll
        page.wait_for_function(
            "n => document.querySelectorAll('#grid .thumb').length > n || !document.querySelector('#load-more')",
            arg=page.locator("#grid .thumb").count(),
        )
    assert page.locator("#grid .thumb").count() == total
    assert page.inner_text("#end-of-results") == f"All {total:,} results shown."


def test_the_viewer_shows_an_image_large_and_labels_it(page):
    _search(page, "ankle boot")
    ids = _ids(page)
    page.locator(".cell a.open").nth(0).click()
    page.wait_for_selector("#lightbox[open]")
    page.wait_for_function(
        "() => { const i = document.getElementById('lightbox-image'); return i.complete && i.naturalWidth > 0; }"
    )
    assert page.inner_text("#lightbox-title") == f"Image {ids[0]}"
    box = page.locator("#lightbox-image").bounding_box()
    assert box["width"] >= 300  # a 28 px image, shown large...
    assert (
        page.eval_on_selector("#lightbox-image", "e => getComputedStyle(e).imageRendering") == "pixelated"
    )  # ...crisp
    page.wait_for_selector("#lightbox-info dl.info")
    assert "Ankle boot" in page.inner_text("#lightbox-info") and "label" in page.inner_text("#lightbox-info")
    assert "distance" in page.inner_text("#lightbox-score")
    page.keyboard.press("p")
    assert "positive" in page.inner_text("#lightbox-state")
    page.keyboard.press("ArrowRight")
    assert page.inner_text("#lightbox-title") == f"Image {ids[1]}"
    page.keyboard.press("n")
    page.keyboard.press("Escape")
    assert page.locator("#lightbox[open]").count() == 0
    assert page.inner_text("#label-counts") == "1 positive, 1 negative"
    # the file itself opens in the browser, not as a download
    href = page.get_attribute("#lightbox-open", "href")
    response = page.request.get(href)
    assert response.ok and response.headers["content-type"].startswith("image/")
    assert "attachment" not in response.headers.get("content-disposition", "")


def test_labels_save_and_load_and_exports_download(page, tmp_path):
    import json

    _search(page, "dress")
    ids = _ids(page)
    page.locator("#grid .thumb").nth(0).click()
    page.locator("#grid .thumb").nth(1).click()
    page.locator("#grid .thumb").nth(1).click()
    with page.expect_download() as saved:
        page.click("#export-labels")
    data = json.loads(Path(saved.value.path()).read_text())
    assert data["positives"] == [int(ids[0])] and data["negatives"] == [int(ids[1])]
    page.click("#clear-labels")
    page.set_input_files("#import-labels", saved.value.path())
    page.wait_for_function(
        "() => document.getElementById('label-counts').innerText === '1 positive, 1 negative'"
    )
    bad = tmp_path / "bad.json"
    bad.write_text('{"positives": ["x"]}')
    page.set_input_files("#import-labels", str(bad))
    page.wait_for_selector("#messages .error")
    assert "not a labels file" in page.inner_text("#messages .error")
    assert page.inner_text("#label-counts") == "1 positive, 1 negative"  # nothing lost
    with page.expect_download() as csv:
        page.click("#export-csv")
    lines = Path(csv.value.path()).read_text().splitlines()
    assert lines[0].startswith('"rank","id","distance"') and len(lines) == 61


def test_the_console_downloads_a_csv(browser, server):
    errors: list[str] = []
    context, pg = _open(browser, server + "/console", errors)
    try:
        pg.fill("#sql", "SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label")
        with pg.expect_download() as got:
            pg.click("#download-csv")
        lines = Path(got.value.path()).read_text().splitlines()
        assert lines[0] == '"label","n"' and len(lines) == 11
    finally:
        context.close()
    assert errors == []


def test_a_phone_gets_a_sticky_bar_big_targets_and_no_overflow(browser, server):
    errors: list[str] = []
    context, pg = _open(browser, server + "/", errors, width=390, height=844)
    try:
        assert pg.evaluate("() => document.documentElement.scrollWidth") <= 390
        assert (
            pg.locator("#catalog-chooser").bounding_box()["x"]
            + pg.locator("#catalog-chooser").bounding_box()["width"]
            <= 390
        )
        _search(pg, "sneaker")
        assert pg.evaluate("() => document.documentElement.scrollWidth") <= 390
        for link in (".cell a.similar", ".cell a.open"):
            box = pg.locator(link).first.bounding_box()
            assert box["width"] >= 44 and box["height"] >= 44, (link, box)
        pg.locator("#grid .thumb").nth(0).click()
        pg.mouse.wheel(0, 4000)  # deep in the grid, the bar stays at the bottom of the screen
        pg.wait_for_timeout(300)
        bar = pg.locator("#action-bar").bounding_box()
        assert bar["y"] + bar["height"] <= 844 + 1 and bar["y"] > 844 - 120
        assert pg.inner_text("#bar-counts") == "1 positive, 0 negative" and pg.is_enabled("#bar-refine")
        pg.click("#bar-refine")
        pg.wait_for_selector(".result[data-kind=refine]")
        OUT.mkdir(exist_ok=True)
        pg.screenshot(path=str(OUT / "phone_refine_390.png"))
    finally:
        context.close()
    assert errors == []


AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"  # axe-core 4.14.1, MPL-2.0


def _axe(pg) -> list[dict]:
    """axe-core's violations on the page as it is now (WCAG 2.x A and AA rules, and best practices)."""
    pg.evaluate(AXE.read_text(encoding="utf-8"))
    return pg.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))"
    )


@pytest.mark.parametrize("width", [1280, 390])
def test_axe_finds_no_violations_on_any_page(browser, server, width):
    context = browser.new_context(viewport={"width": width, "height": 900}, bypass_csp=True)
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    try:
        pg.goto(server + "/")
        assert _axe(pg) == []
        _search(pg, "sandal")
        pg.locator("#grid .thumb").nth(0).click()
        pg.locator("#grid .thumb").nth(1).click()
        pg.locator("#grid .thumb").nth(1).click()
        assert _axe(pg) == []
        _refine(pg)
        pg.click("#sql-panel summary")
        assert _axe(pg) == []
        pg.click("#tab-next")
        assert _axe(pg) == []
        pg.locator("#grid a.open").first.click() if pg.locator("#grid").is_visible() else pg.locator(
            "#next-grid a.open"
        ).first.click()
        pg.wait_for_selector("#lightbox[open] dl.info")
        assert _axe(pg) == []
        pg.keyboard.press("Escape")
        pg.fill("#q", "ankle boot")
        pg.press("#q", "Enter")
        pg.wait_for_selector("#new-query[open]")
        assert _axe(pg) == []
        pg.click("#cancel-query")
        pg.goto(server + "/console")
        pg.click("#run-sql")
        pg.wait_for_selector("table.sql-result")
        assert _axe(pg) == []
    finally:
        context.close()


def test_the_query_shows_beside_its_results_and_an_image_can_be_dropped(page, tmp_path):
    import base64

    from PIL import Image

    _search(page, "ankle boot")
    assert "“ankle boot”" in page.inner_text("#stats")
    first = _ids(page)[0]
    page.locator(".cell a.similar").first.click()
    page.wait_for_selector(".result[data-kind=similar]")
    assert f"image {first}" in page.inner_text("#stats")
    assert page.get_attribute("#query-shown img", "src").endswith(f"/{first}")
    # an image dropped on the page searches by it, and is shown beside the results
    Image.new("L", (28, 28), 90).save(tmp_path / "drop.png")
    data = base64.b64encode((tmp_path / "drop.png").read_bytes()).decode()
    page.evaluate(
        """b64 => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "drop.png", {type: "image/png"}));
            document.querySelector("main").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""",
        data,
    )
    page.wait_for_selector(".result[data-kind=image]")
    page.wait_for_function(
        "() => { const i = document.getElementById('query-image'); return i && !i.hidden && i.complete && i.naturalWidth === 28; }"
    )
    assert "uploaded image" in page.inner_text("#stats")


def test_the_tray_folds_away(page):
    _search(page, "coat")
    page.click("#all-positive")
    assert page.inner_text("#tray-count") == "(60)" and page.locator("#tray-items li").first.is_visible()
    page.click("#tray summary")
    assert not page.locator("#tray-items li").first.is_visible()
    assert page.inner_text("#label-counts") == "60 positive, 0 negative"
