"""Saved concepts in the web app, against `clip-branches serve` on a copy of the demo catalog: a
fine-tune saved from the page, listed in the Concepts panel after a reload, opened as the same
images, renamed and deleted; what is new since a concept was last opened; the notice of a catalog
that grew; the JSON API; and bad input answered with a clear 4xx that saves nothing. Screenshots
go to test-output/."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from urllib.parse import urljoin

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
OUT = Path(__file__).resolve().parent.parent / "test-output"
AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"  # axe-core 4.14.1, MPL-2.0
HX = {"HX-Request": "true"}
CATALOG = "fashion"

browser_only = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


# -- helpers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, timeout=120) as client:
        yield client


def _label_ids(http, label: str, n: int) -> list[int]:
    sql = f"SELECT id FROM images WHERE label = '{label}' ORDER BY id LIMIT {n}"
    return [row["id"] for row in http.post("/api/sql", json={"sql": sql}).json()["rows"]]


@pytest.fixture(scope="module")
def refined(http) -> dict:
    """A fine-tune on three sandals through the JSON API: its answer (all ids, and the token)."""
    r = http.post("/api/refine?limit=100000", json={"positives": _label_ids(http, "Sandal", 3)})
    assert r.status_code == 200, r.text
    return r.json()


def _listed(http, seen: str = "") -> dict[str, dict]:
    r = http.get("/api/concepts", params={"catalog": CATALOG, "seen": seen})
    assert r.status_code == 200, r.text
    return {c["name"]: c for c in r.json()["concepts"]}


def _delete(http, name: str) -> None:
    http.post("/concepts/delete", data={"catalog": CATALOG, "name": name})


def _export_ids(pg, token: str) -> list[int]:
    text = pg.request.get(urljoin(pg.url, f"/export/{token}?format=csv")).text()
    return [int(row["id"]) for row in csv.DictReader(io.StringIO(text))]


def _search(pg, text: str) -> None:
    pg.fill("#q", text)
    pg.press("#q", "Enter")
    pg.wait_for_function(
        "t => document.querySelector('.result') && document.querySelector('.result').dataset.kind === 'search'"
        " && new URL(location.href).searchParams.get('q') === t",
        arg=text,
    )


def _refine(pg) -> None:
    before = pg.get_attribute(".result", "data-token") if pg.locator(".result").count() else None
    pg.click("#refine-button")
    pg.wait_for_function(
        "t => { const r = document.querySelector('.result'); return r && r.dataset.kind === 'refine' && r.dataset.token !== t; }",
        arg=before,
    )


def _fine_tune(pg, text: str = "sandal", n: int = 3) -> None:
    _search(pg, text)
    for i in range(n):
        pg.locator("#grid .thumb").nth(i).click()
    _refine(pg)


def _count(pg) -> int:
    return int(pg.inner_text("#result-count").replace(",", ""))


def _ids(pg, selector="#grid .thumb") -> list[str]:
    return pg.locator(selector).evaluate_all("els => els.map(e => e.dataset.id)")


def _save(pg, name: str, note: str = "", replace: bool = False) -> None:
    pg.click("#save-concept")
    pg.wait_for_selector("#save-concept-dialog[open]")
    pg.fill("#concept-name", name)
    pg.fill("#concept-note-input", note)
    if replace:
        pg.check("#concept-replace")
    pg.click("#save-concept-submit")


def _open_panel(pg) -> None:
    pg.evaluate("() => { document.getElementById('concepts-panel').innerHTML = ''; }")  # no stale list
    pg.click("#concepts-button")
    pg.wait_for_selector("#concepts-dialog[open] .concepts")


def _row(pg, name: str):
    return pg.locator(f'#concepts-panel li.concept[data-name="{name}"]')


def _axe(pg) -> list[dict]:
    """axe-core's violations on the page as it is now (WCAG 2.x A and AA rules, and best practices)."""
    pg.evaluate(AXE.read_text(encoding="utf-8"))
    return pg.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))"
    )


# -- the JSON API and bad input --------------------------------------------------------------
def test_the_json_api_saves_lists_and_opens_a_concept(http, refined):
    body = {"token": refined["result"], "name": "api_sandals", "note": "three sandals, from a script"}
    r = http.post("/api/concepts", json=body)
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["name"] == "api_sandals" and info["view"] == "concept_api_sandals"
    assert info["images"] == refined["results"] and info["positives"] == 3 and not info["stale"]
    assert info["new"] is None and info["max_id"] == max(refined["ids"])
    # what is new since a given id, per concept
    cut = sorted(refined["ids"])[len(refined["ids"]) // 2]
    listed = _listed(http, f"api_sandals:{cut}")["api_sandals"]
    assert listed["new"] == sum(i > cut for i in refined["ids"]) and listed["note"] == body["note"]
    # opened: the fine-tune's images, in its order
    opened = http.get(f"/api/concept/{CATALOG}/api_sandals", params={"limit": 100000, "seen": cut}).json()
    assert opened["ids"] == refined["ids"] and opened["stats"]["new"] == listed["new"]
    only = http.get(f"/api/concept/{CATALOG}/api_sandals", params={"seen": cut, "only_new": "true"}).json()
    assert only["ids"] == [i for i in refined["ids"] if i > cut] and only["results"] == listed["new"]
    assert f"WHERE id > {cut}" in only["sql"]
    # a name in use is refused, unless replacing is asked for
    again = http.post("/api/concepts", json=body)
    assert again.status_code == 400 and "exists" in again.json()["detail"]
    assert http.post("/api/concepts", json={**body, "note": "replaced", "replace": True}).status_code == 201
    assert _listed(http)["api_sandals"]["note"] == "replaced"
    _delete(http, "api_sandals")
    assert "api_sandals" not in _listed(http)


@pytest.mark.parametrize(
    "change, status, message",
    [
        ({"token": "no-such-token"}, 404, "no longer kept"),
        ({"name": "Bad Name!"}, 400, "not a usable concept name"),
        ({"name": "x" * 49}, 400, "not a usable concept name"),
        ({"name": "x" * 101}, 400, "name must be"),
        ({"name": ""}, 400, "not a usable concept name"),
        ({"note": "n" * 501}, 400, "at most 500 characters"),
        ({"replace": "yes"}, 400, "replace must be"),
        ({"catalog": "nowhere"}, 404, "no catalog named"),
        ({"extra": 1}, 400, "unknown field"),
    ],
)
def test_a_bad_save_gets_a_clear_4xx_and_saves_nothing(http, refined, change, status, message):
    body = {"token": refined["result"], "name": "bad_case", **change}
    before = _listed(http)
    r = http.post("/api/concepts", json=body)
    assert r.status_code == status and message in r.json()["detail"], r.text
    assert _listed(http) == before


def test_only_a_fine_tune_can_be_saved(http):
    search = http.get("/api/search", params={"q": "sandal"}).json()["result"]
    r = http.post("/api/concepts", json={"token": search, "name": "from_search"})
    assert r.status_code == 400 and "only a fine-tune" in r.json()["detail"]
    assert "from_search" not in _listed(http)


def test_seen_is_read_defensively_and_bounded(http, refined):
    assert (
        http.post("/api/concepts", json={"token": refined["result"], "name": "seen_case"}).status_code == 201
    )
    try:
        junk = ",".join(
            ["", "::", "Bad:1", "seen_case:x", "seen_case:99999999999999999999", "a" * 60 + ":1", "x:1:2"]
        )
        assert _listed(http, junk)["seen_case"]["new"] is None  # nothing usable: as never opened
        assert _listed(http, junk + ",seen_case:-1")["seen_case"]["new"] == refined["results"]
        many = ",".join(f"n{i}:{i}" for i in range(600)) + ",seen_case:-1"  # past the pairs read
        assert len(many) < 8000 and _listed(http, many)["seen_case"]["new"] is None
        r = http.get("/api/concepts", params={"seen": "a:1," * 2001})
        assert r.status_code == 400 and "seen" in r.json()["detail"]
        r = http.get("/concepts", params={"seen": "x" * 8001}, headers=HX)
        assert r.status_code == 400 and 'class="error"' in r.text
        r = http.get(f"/api/concept/{CATALOG}/seen_case", params={"seen": "12abc"})
        assert r.status_code == 400
    finally:
        _delete(http, "seen_case")


def test_the_panels_forms_answer_with_the_panel_or_an_error_fragment(http, refined):
    form = {"catalog": CATALOG, "token": refined["result"], "name": "form_one", "note": "<b>bold?</b>"}
    r = http.post("/concepts/save", data=form, headers=HX)
    assert r.status_code == 200 and 'data-action="saved"' in r.text
    assert "&lt;b&gt;bold?&lt;/b&gt;" in r.text and "<b>bold?</b>" not in r.text
    try:
        r = http.post("/concepts/save", data={**form, "name": "Form One"}, headers=HX)
        assert r.status_code == 400 and 'role="alert"' in r.text and "not a usable concept name" in r.text
        r = http.post("/concepts/save", data={**form, "note": "changed", "replace": "true"}, headers=HX)
        assert r.status_code == 200 and _listed(http)["form_one"]["note"] == "changed"
        assert http.post("/concepts/save", data={**form, "name": "form_two"}, headers=HX).status_code == 200
        r = http.post(
            "/concepts/rename", data={"catalog": CATALOG, "name": "form_one", "new_name": "form_two"}
        )
        assert r.status_code == 400 and "exists" in r.text
        r = http.post(
            "/concepts/rename", data={"catalog": CATALOG, "name": "form_one", "new_name": "Form_Three"}
        )
        assert (
            r.status_code == 200
            and 'data-old-name="form_one"' in r.text
            and {"form_three", "form_two"} <= set(_listed(http))
        )
        for path, data in [
            ("/concepts/delete", {"name": "no_such"}),
            ("/concepts/rename", {"name": "no_such", "new_name": "other"}),
            ("/concepts/retrain", {"name": "no_such"}),
        ]:
            r = http.post(path, data={"catalog": CATALOG, **data}, headers=HX)
            assert r.status_code == 404 and "no concept named" in r.text, path
        assert http.get(f"/concept/{CATALOG}/no_such", headers=HX).status_code == 404
        assert http.get(f"/concept/{CATALOG}/Not%20a%20name", headers=HX).status_code == 400
        # a browser following a link gets the search page showing the concept
        r = http.get(f"/concept/{CATALOG}/form_two")
        assert r.is_redirect and r.headers["location"] == f"/?catalog={CATALOG}&concept=form_two"
    finally:
        for name in ("form_one", "form_two", "form_three"):
            _delete(http, name)
    assert not {"form_one", "form_two", "form_three"} & set(_listed(http))


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}],
)
def test_other_sites_cannot_change_concepts(http, refined, headers):
    assert http.post("/api/concepts", json={"token": refined["result"], "name": "guarded"}).status_code == 201
    try:
        for path, data in [
            ("/concepts/delete", {"name": "guarded"}),
            ("/concepts/rename", {"name": "guarded", "new_name": "taken"}),
            ("/concepts/save", {"token": refined["result"], "name": "planted"}),
        ]:
            r = http.post(path, data={"catalog": CATALOG, **data}, headers=headers)
            assert r.status_code == 403 and "cross-origin" in r.json()["detail"], path
        r = http.post("/api/concepts", json={"token": refined["result"], "name": "planted"}, headers=headers)
        assert r.status_code == 403
        assert "guarded" in _listed(http) and not {"taken", "planted"} & set(_listed(http))
    finally:
        _delete(http, "guarded")


# -- in the browser --------------------------------------------------------------------------
@browser_only
def test_a_fine_tune_saved_as_a_concept_is_listed_opened_renamed_and_deleted(page):
    _fine_tune(page)
    total, shown, token = _count(page), _ids(page), page.get_attribute(".result", "data-token")
    _save(page, "ui_sandals", "three sandals")
    # saved: the panel opens with a confirmation, the concept listed with the fine-tune's count
    page.wait_for_selector("#concepts-dialog[open] #concepts-done[data-action=saved]")
    assert page.locator("#save-concept-dialog[open]").count() == 0
    page.keyboard.press("Escape")
    page.reload()
    page.wait_for_selector(".result[data-kind=refine]")
    _open_panel(page)
    row = _row(page, "ui_sandals")
    assert row.locator(".concept-count").inner_text() == f"{total:,} images"
    assert "three sandals" in row.inner_text() and "3 positive" in row.inner_text()
    assert "not opened in this browser yet" in row.inner_text()
    # opened: the same images in the same order, then recorded as seen in this browser
    row.locator(".concept-open").click()
    page.click("#keep-labels")  # opening a concept is a new query: the labels are asked about
    page.wait_for_selector('.result[data-kind=concept][data-concept="ui_sandals"]')
    assert page.locator("#concepts-dialog[open]").count() == 0
    assert _count(page) == total and _ids(page) == shown
    concept_token = page.get_attribute(".result", "data-token")
    assert _export_ids(page, concept_token) == _export_ids(page, token)
    assert "ui_sandals" in page.inner_text("#stats") and "three sandals" in page.inner_text("#stats")
    assert page.locator("#save-concept").count() == 0  # an opened concept is saved already
    seen = page.evaluate("() => JSON.parse(localStorage.getItem('clip-branches-seen')).fashion.ui_sandals")
    assert seen == page.get_attribute(".result", "data-max-id") and "concept=ui_sandals" in page.url
    page.reload()  # a reload shows it again
    page.wait_for_selector(".result[data-kind=concept]")
    assert page.get_attribute(".result", "data-token") == concept_token
    # renamed: listed under the new name, what was seen follows it
    _open_panel(page)
    assert "nothing new since you last opened it" in _row(page, "ui_sandals").inner_text()
    _row(page, "ui_sandals").get_by_role("button", name="Rename ui_sandals").click()
    page.fill("#rename-ui_sandals input[name=new_name]", "ui_sandals_renamed")
    page.click("#rename-ui_sandals button[type=submit]")
    page.wait_for_selector("#concepts-done[data-action=renamed]")
    assert page.evaluate("() => document.activeElement.id") == "concepts-done"
    assert _row(page, "ui_sandals").count() == 0
    renamed = _row(page, "ui_sandals_renamed")
    assert renamed.locator(".concept-count").inner_text() == f"{total:,} images"
    assert "nothing new" in renamed.inner_text() and "concept=ui_sandals_renamed" in page.url
    # deleted, after a confirmation
    renamed.get_by_role("button", name="Delete ui_sandals_renamed").click()
    page.click("#delete-ui_sandals_renamed button[type=submit]")
    page.wait_for_selector("#concepts-done[data-action=deleted]")
    assert _row(page, "ui_sandals_renamed").count() == 0
    stored = page.evaluate("() => JSON.parse(localStorage.getItem('clip-branches-seen')).fashion")
    assert "ui_sandals_renamed" not in stored and "ui_sandals" not in stored


@browser_only
def test_a_bad_or_taken_name_shows_the_error_in_the_dialog_and_saves_nothing(page, http):
    _fine_tune(page, "trouser", 2)
    before = _listed(http)
    _save(page, "Bad Name!")
    page.wait_for_selector("#save-concept-error .error")
    assert "not a usable concept name" in page.inner_text("#save-concept-error")
    assert page.locator("#save-concept-dialog[open]").count() == 1  # still there, to fix the name
    assert page.locator("#messages .error").count() == 0 and _listed(http) == before
    page.fill("#concept-name", "ui_trousers")
    page.click("#save-concept-submit")
    page.wait_for_selector("#concepts-dialog[open] #concepts-done[data-action=saved]")
    page.click("#concepts-close")
    # the same name again: refused, unless replacing is ticked
    _save(page, "ui_trousers", "second")
    page.wait_for_selector("#save-concept-error .error")
    assert "exists" in page.inner_text("#save-concept-error") and _listed(http)["ui_trousers"]["note"] == ""
    page.check("#concept-replace")
    page.click("#save-concept-submit")
    page.wait_for_selector("#concepts-dialog[open] #concepts-done[data-action=saved]")
    assert _listed(http)["ui_trousers"]["note"] == "second"
    _delete(http, "ui_trousers")


@browser_only
def test_images_new_since_a_concept_was_last_opened_are_counted_and_marked(page, http, refined):
    assert http.post("/api/concepts", json={"token": refined["result"], "name": "ui_new"}).status_code == 201
    try:
        ids = refined["ids"]
        cut = sorted(ids)[-5]  # as if the four largest ids arrived after the last opening
        newer = {str(i) for i in ids if i > cut}
        page.evaluate(
            "cut => localStorage.setItem('clip-branches-seen', JSON.stringify({fashion: {ui_new: cut}}))",
            str(cut),
        )
        _open_panel(page)
        assert _row(page, "ui_new").locator(".new-chip").inner_text() == f"{len(newer)} new"
        _row(page, "ui_new").locator(".concept-open").click()
        page.wait_for_selector('.result[data-concept="ui_new"]')
        assert page.inner_text("#concept-new") == f"{len(newer)} new"
        if page.locator("#load-more").count():
            page.locator("#load-more button").scroll_into_view_if_needed()
        page.wait_for_function("n => document.querySelectorAll('#grid .thumb').length >= n", arg=len(ids))
        assert set(_ids(page, "#grid .thumb.new")) == newer
        assert "new" in page.get_attribute(f'#grid .thumb[data-id="{sorted(newer)[0]}"]', "aria-label")
        # the new ones alone, and back
        page.click("#concept-only-new")
        page.wait_for_selector("#concept-show-all")
        assert _count(page) == len(newer) and set(_ids(page)) == newer == set(_ids(page, "#grid .thumb.new"))
        page.click("#concept-show-all")
        page.wait_for_selector("#concept-only-new")
        assert _count(page) == len(ids)
        _open_panel(page)
        assert _row(page, "ui_new").locator(".new-chip").count() == 0
        assert "nothing new" in _row(page, "ui_new").inner_text()
    finally:
        _delete(http, "ui_new")


@browser_only
def test_the_page_says_when_the_catalog_grew_and_runs_the_search_again(page):
    import json

    _search(page, "coat")
    token = page.get_attribute(".result", "data-token")
    polls = []

    def grown(route):
        polls.append(time.monotonic())
        body = json.loads(route.fetch().text())
        body["catalogs"][CATALOG]["rows"] += 7
        route.fulfill(json=body)

    page.route("**/api/health*", grown)
    page.wait_for_selector("#growth:not([hidden])", timeout=15_000)
    assert page.inner_text("#growth-text") == "7 new images since this page loaded."
    assert page.inner_text("#growth-rerun") == "Search again"
    OUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUT / "concepts_growth_notice_1280.png"))
    page.click("#growth-rerun")
    page.wait_for_function("t => document.querySelector('.result').dataset.token !== t", arg=token)
    assert page.locator("#growth").is_hidden()
    # a hidden tab does not poll
    page.evaluate(
        "() => { Object.defineProperty(document, 'hidden', {value: true, configurable: true});"
        " document.dispatchEvent(new Event('visibilitychange')); }"
    )
    before = len(polls)
    page.wait_for_timeout(6_000)
    assert len(polls) == before


@browser_only
@pytest.mark.parametrize("width", [1280, 390])
def test_the_concepts_panel_and_dialog_pass_axe_and_fit_the_screen(browser, server, http, refined, width):
    assert (
        http.post("/api/concepts", json={"token": refined["result"], "name": f"axe_{width}"}).status_code
        == 201
    )
    context = browser.new_context(viewport={"width": width, "height": 900}, bypass_csp=True)
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    try:
        pg.goto(server + "/")
        _fine_tune(pg, "bag", 2)
        assert _axe(pg) == []
        OUT.mkdir(exist_ok=True)
        pg.click("#save-concept")
        pg.wait_for_selector("#save-concept-dialog[open]")
        assert pg.evaluate("() => document.activeElement.id") == "concept-name"
        pg.fill("#concept-name", "Not OK")
        pg.click("#save-concept-submit")
        pg.wait_for_selector("#save-concept-error .error")
        assert _axe(pg) == []
        pg.screenshot(path=str(OUT / f"concepts_save_dialog_{width}.png"))
        pg.keyboard.press("Escape")
        _open_panel(pg)
        _row(pg, f"axe_{width}").get_by_role("button", name=f"Rename axe_{width}").click()
        assert _axe(pg) == []
        assert pg.evaluate("() => document.documentElement.scrollWidth") <= width
        box = pg.locator("#concepts-dialog").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width + 1
        pg.screenshot(path=str(OUT / f"concepts_panel_{width}.png"))
    finally:
        context.close()
        _delete(http, f"axe_{width}")
    assert errors == []
