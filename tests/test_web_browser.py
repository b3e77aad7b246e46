"""The UI in a real browser: Debian's chromium driven by playwright against `clip-branches
serve` on 127.0.0.1. Every test saves a screenshot under test-output/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")
OUT = Path(__file__).resolve().parent.parent / "test-output"


def _search(pg, text: str) -> None:
    pg.fill("#q", text)
    pg.press("#q", "Enter")
    pg.wait_for_selector("#grid .thumb")


def _count(pg) -> int:
    return int(pg.inner_text("#result-count").replace(",", ""))


def test_search_shows_a_grid(page):
    _search(page, "sneaker")
    assert page.locator("#grid .thumb").count() == 60
    assert _count(page) == 60
    # the first thumbnail loads and decodes (lazy loading: it is in view)
    page.wait_for_function(
        "() => { const img = document.querySelector('#grid .thumb img');"
        " return img.complete && img.naturalWidth > 0; }"
    )


def test_labelling_by_click_keyboard_and_all_buttons(page):
    _search(page, "ankle boot")
    thumbs = page.locator("#grid .thumb")
    thumbs.nth(0).click()
    assert "pos" in thumbs.nth(0).get_attribute("class")
    thumbs.nth(0).click()
    assert "neg" in thumbs.nth(0).get_attribute("class")
    thumbs.nth(0).click()
    assert "pos" not in thumbs.nth(0).get_attribute("class") and "neg" not in thumbs.nth(0).get_attribute(
        "class"
    )
    thumbs.nth(1).focus()
    page.keyboard.press("Enter")
    assert "pos" in thumbs.nth(1).get_attribute("class")
    page.keyboard.press("n")
    assert "neg" in thumbs.nth(1).get_attribute("class")
    assert page.inner_text("#label-counts") == "0 positive, 1 negative"
    page.click("#all-positive")  # the unlabelled ones only: the negative stays
    assert page.locator("#grid .thumb.pos").count() == 59
    assert "neg" in thumbs.nth(1).get_attribute("class")
    assert page.inner_text("#label-counts") == "59 positive, 1 negative"
    page.click("#all-negative")  # nothing left unlabelled: nothing changes
    assert page.inner_text("#label-counts") == "59 positive, 1 negative"
    page.click("#clear-labels")
    assert page.locator("#grid .thumb.pos, #grid .thumb.neg").count() == 0


def test_fine_tuning_changes_the_results_and_shows_statistics(page):
    _search(page, "sneaker")
    before = page.locator("#grid .thumb").evaluate_all("els => els.map(e => e.dataset.id)")
    page.click("#all-positive")
    page.select_option("#model", "ensemble")
    page.click("#refine-button")
    page.wait_for_selector(".result[data-kind=refine]")
    stats = page.inner_text("#stats")
    assert "classified positive by the ensemble model" in stats
    assert re.search(r"sample [\d.]+ ms · train [\d.]+ ms · query [\d.]+ ms", stats)
    assert "% of the catalog" in stats
    after = page.locator("#grid .thumb").evaluate_all("els => els.map(e => e.dataset.id)")
    assert after != before and _count(page) != 60
    # labels survive the new grid: the 60 positives stay green where they reappear
    assert page.locator("#grid .thumb.pos").count() >= 1


def test_load_more_pages_through_every_result(page):
    _search(page, "bag")
    page.click("#all-positive")
    page.select_option("#model", "branch")
    page.click("#refine-button")
    page.wait_for_selector(".result[data-kind=refine]")
    total = _count(page)
    assert total > 60
    while page.locator("#load-more button").count():
        page.click("#load-more button")
        page.wait_for_function(
            f"() => document.querySelectorAll('#grid .thumb').length > "
            f"{page.locator('#grid .thumb').count()} || !document.querySelector('#load-more')"
        )
    assert page.locator("#grid .thumb").count() == total


def test_sql_panel_shows_and_copies_the_sql(page):
    _search(page, "dress")
    page.click("#all-positive")
    page.click("#refine-button")
    page.wait_for_selector(".result[data-kind=refine]")
    page.click("#sql-panel summary")
    sql = page.inner_text("#sql-text")
    assert sql.startswith("SELECT id, votes") and "BETWEEN" in sql
    page.click("#copy-sql")
    # a function, not an expression: playwright evaluates an expression anew on every poll, which
    # the Content-Security-Policy (no 'unsafe-eval') refuses
    page.wait_for_function("() => document.getElementById('copy-sql').textContent === 'Copied'")


def test_console_runs_queries_and_refuses_escapes(page, server):
    page.goto(server + "/console")
    page.fill("#sql", "SELECT id, label FROM images WHERE label = 'Bag' ORDER BY id LIMIT 5")
    page.click("#run-sql")
    page.wait_for_selector("table.sql-result")
    assert page.locator("table.sql-result tbody tr").count() == 5
    assert page.locator("table.sql-result img.mini").count() == 5
    page.fill("#sql", "SELECT * FROM read_csv('/etc/passwd')")
    page.click("#run-sql")
    page.wait_for_selector("#console-result .error")
    assert "read_csv() is not available in the console" in page.inner_text("#console-result .error")


def test_reload_keeps_labels_and_results(page):
    _search(page, "pullover")
    thumbs = page.locator("#grid .thumb")
    ids = [thumbs.nth(i).get_attribute("data-id") for i in range(3)]
    thumbs.nth(0).click()
    thumbs.nth(1).click()
    thumbs.nth(2).click()
    thumbs.nth(2).click()
    page.reload()
    page.wait_for_selector("#grid .thumb")
    assert page.inner_text("#label-counts") == "2 positive, 1 negative"
    assert "pos" in page.locator(f'#grid .thumb[data-id="{ids[0]}"]').get_attribute("class")
    assert "neg" in page.locator(f'#grid .thumb[data-id="{ids[2]}"]').get_attribute("class")
    assert page.input_value("#q") == "pullover"


def test_errors_show_a_message(page):
    page.fill("#q", "   ")
    page.click("#search-button")
    page.wait_for_selector("#messages .error")
    assert "empty" in page.inner_text("#messages .error")


def test_label_next_view_shows_suggestions_to_label_and_fine_tune_again(browser, server):
    for width, height in ((1280, 900), (390, 844)):  # a desktop and a phone
        context = browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        page.set_default_timeout(60_000)
        errors: list[str] = []
        page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
        page.goto(server + "/")
        _search(page, "sandal")
        page.click("#all-positive")
        page.click("#refine-button")
        page.wait_for_selector(".result[data-kind=refine]")
        assert page.locator("#next-panel").is_hidden() and page.locator("#grid").is_visible()
        assert page.get_attribute("#tab-results", "aria-selected") == "true"
        page.click("#tab-next")
        assert page.locator("#next-panel").is_visible() and page.locator("#grid").is_hidden()
        assert page.get_attribute("#tab-next", "aria-selected") == "true"
        suggested = page.locator("#next-grid .thumb").evaluate_all("els => els.map(e => e.dataset.id)")
        labelled = page.evaluate(
            "() => Object.keys(JSON.parse(sessionStorage.getItem('clip-branches'))"
            ".labels[document.getElementById('app').dataset.catalog])"
        )
        assert len(suggested) == len(set(suggested)) > 0 and not set(suggested) & set(labelled)
        assert page.inner_text("#tab-next .count") == str(len(suggested))
        page.wait_for_function(
            "() => { const img = document.querySelector('#next-grid .thumb img');"
            " return img && img.complete && img.naturalWidth > 0; }"
        )
        OUT.mkdir(exist_ok=True)
        page.screenshot(path=str(OUT / f"label_next_{width}.png"), full_page=True)
        # "All negative" acts on the view shown: the suggestions, not the results
        page.click("#all-negative")
        assert page.locator("#next-grid .thumb.neg").count() == len(suggested)
        assert page.locator("#grid .thumb.neg").count() == 0
        page.locator("#next-grid .thumb").first.click()  # negative -> unlabelled
        assert page.locator("#next-grid .thumb.neg").count() == len(suggested) - 1
        counts = page.inner_text("#label-counts")
        assert f"{len(suggested) - 1} negative" in counts
        # keyboard: arrows move between the two views
        page.focus("#tab-next")
        page.keyboard.press("ArrowLeft")
        assert page.locator("#grid").is_visible() and page.locator("#next-panel").is_hidden()
        # fine-tuning again sends the new labels and shows new suggestions
        page.click("#refine-button")
        page.wait_for_function(
            "() => document.querySelector('#stats') && "
            f"document.querySelector('#stats').innerText.includes('{len(suggested) - 1} negative')"
        )
        again = page.locator("#next-grid .thumb").evaluate_all("els => els.map(e => e.dataset.id)")
        assert again and not set(again) & set(suggested[1:])
        context.close()
        assert errors == [], errors
