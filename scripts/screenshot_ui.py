"""Screenshot of the refine page for the README: serve a catalog, search, label every result
positive, fine-tune with the ensemble, and save a PNG (Debian's chromium via playwright).

    python scripts/screenshot_ui.py [--catalog demo/fashion.duckdb] [--query sneaker]
                                    [--out web/static/refine-page.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_web import _free_port, start_server  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default="demo/fashion.duckdb")
    ap.add_argument("--query", default="sneaker")
    ap.add_argument("--model", default="ensemble")
    ap.add_argument("--out", default="web/static/refine-page.png")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    port = _free_port()
    proc = start_server(args.catalog, port, 300)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium",
                headless=True,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(120_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.fill("#q", args.query)
            page.press("#q", "Enter")
            page.wait_for_selector("#grid .thumb")
            page.click("#all-positive")
            page.select_option("#model", args.model)
            page.click("#refine-button")
            page.wait_for_selector(".result[data-kind=refine]")
            for n in (3, 8):  # two negatives, to show both colours
                thumb = page.locator("#grid .thumb").nth(n)
                while "neg" not in (thumb.get_attribute("class") or ""):
                    thumb.click()
            page.wait_for_load_state("networkidle")
            page.screenshot(path=args.out, full_page=False)
            print(page.inner_text("#stats"))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
