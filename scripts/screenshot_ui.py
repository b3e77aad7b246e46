"""Screenshots of the refine page for the README, on a desktop and on a phone: serve a catalog,
search, label every result positive, fine-tune with the ensemble, mark two results negative,
and save PNGs (Debian's chromium via playwright).

    python scripts/screenshot_ui.py [--catalog demo/fashion.duckdb] [--query sneaker]
                                    [--out web/static/refine-page.png]
                                    [--phone-out web/static/refine-phone.png]
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
    ap.add_argument("--phone-out", default="web/static/refine-phone.png")
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
            for viewport, out in (((1280, 860), args.out), ((390, 844), args.phone_out)):
                page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
                page.set_default_timeout(120_000)
                page.goto(f"http://127.0.0.1:{port}/")
                page.fill("#q", args.query)
                page.press("#q", "Enter")
                page.wait_for_selector("#grid .thumb")
                page.click("#all-positive")
                page.select_option("#model", args.model)
                page.click("#refine-button")
                page.wait_for_selector(".result[data-kind=refine]")
                for n in (3, 8):  # two negatives, to show both marks
                    thumb = page.locator("#grid .thumb").nth(n)
                    while "neg" not in (thumb.get_attribute("class") or ""):
                        thumb.click()
                if viewport[0] < 700:  # on a phone, the results under the sticky bar
                    page.locator("#stats").scroll_into_view_if_needed()
                page.wait_for_load_state("networkidle")
                page.screenshot(path=out, full_page=False)
                print(page.inner_text("#stats"))
                page.close()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
