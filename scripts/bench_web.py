"""Load test of the web UI: concurrent clients doing search-and-refine rounds over real HTTP.

The script starts ``clip-branches serve CATALOG`` on 127.0.0.1 (or uses ``--url``) and runs
``--clients`` threads. Each round of a client is what a user does in the UI:

1. ``GET /search?q=...`` (a query from a fixed list), the results fragment;
2. ``GET /thumb/...`` for the first 12 thumbnails;
3. ``POST /refine`` with 8 of the results as positives and 2 as negatives (the model cycles
   through ensemble, branch, tree and forest);
4. ``GET /results/<token>?offset=60`` (load more), when the refine found more than 60;
5. ``POST /console`` with a metadata query over the refine result.

Then, with ``--paging-to N`` (default 7,000), one client pages deep into a large result: a
fine-tune with every image of a search for bags labelled positive (about 7,000 results on the
demo catalog), then ``GET /results/<token>?offset=...`` page after page up to the N-th result;
with ``--browser`` the same in chromium (Debian's, through playwright): "Load more" scrolled
into view page after page, each page timed from the scroll to its thumbnails painted. The
per-page times of the first and of the last 10 pages are reported: a page must cost the same at
any depth.

The run is bounded by ``--rounds`` per client and ``--seconds`` overall. Per endpoint the script
reports the client's p50/p99 latency, the server's own time (its ``Server-Timing`` header: from
request arrival to response headers, without the client's queueing) and, for search and refine,
the engine's time (``X-Engine-Ms``: search or refine inside ``Catalog``). Errors (any non-2xx or
304, or a failed connection) are counted; the target is zero. Prints JSON.

    python scripts/bench_web.py [--catalog demo/fashion.duckdb] [--clients 8] [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict

import httpx
import numpy as np

QUERIES = [
    "sneaker",
    "ankle boot",
    "a bag to carry things",
    "summer dress",
    "warm winter coat",
    "trousers",
    "t-shirt",
    "shirt with buttons",
    "pullover",
    "sandals",
    "running shoes",
    "handbag",
    "jeans",
    "blouse",
]
MODELS = ["ensemble", "branch", "tree", "forest"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(catalog: str, port: int, timeout_s: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", catalog, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not answer in time")


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.latency = defaultdict(list)
        self.server = defaultdict(list)
        self.engine = defaultdict(list)
        self.errors = defaultdict(int)
        self.error_samples: list[str] = []

    def record(self, name: str, t0: float, r: httpx.Response | None, error: str | None = None) -> None:
        ms = (time.perf_counter() - t0) * 1e3
        with self.lock:
            if r is None or r.status_code not in (200, 304):
                self.errors[name] += 1
                if len(self.error_samples) < 10:
                    self.error_samples.append(f"{name}: {error or (r.status_code, r.text[:200])}")
                return
            self.latency[name].append(ms)
            timing = r.headers.get("server-timing", "")
            m = re.search(r"dur=([\d.]+)", timing)
            if m:
                self.server[name].append(float(m.group(1)))
            if "x-engine-ms" in r.headers:
                self.engine[name].append(float(r.headers["x-engine-ms"]))


def _call(rec: Recorder, name: str, fn, *args, **kw) -> httpx.Response | None:
    t0 = time.perf_counter()
    try:
        r = fn(*args, **kw)
    except httpx.HTTPError as e:
        rec.record(name, t0, None, f"{type(e).__name__}: {e}")
        return None
    rec.record(name, t0, r)
    return r


def client_loop(base: str, client_no: int, rounds: int, stop_at: float, rec: Recorder) -> int:
    rng = np.random.default_rng(client_no)
    done = 0
    with httpx.Client(base_url=base, timeout=120, headers={"HX-Request": "true"}) as c:
        for i in range(rounds):
            if time.time() > stop_at:
                break
            q = QUERIES[int(rng.integers(len(QUERIES)))]
            r = _call(rec, "search", c.get, "/search", params={"q": q})
            if r is None or r.status_code != 200:
                continue
            ids = [int(x) for x in re.findall(r'data-id="(\d+)"', r.text)]
            for image_id in ids[:12]:
                _call(rec, "thumb", c.get, f"/thumb/{catalog_name}/{image_id}")
            pos, neg = ids[:8], ids[-2:]
            model = MODELS[(client_no + i) % len(MODELS)]
            r = _call(
                rec,
                "refine",
                c.post,
                "/refine",
                data={
                    "positives": ",".join(map(str, pos)),
                    "negatives": ",".join(map(str, neg)),
                    "model": model,
                    "sampled_negatives": "500",
                    "negative_weight": "1",
                },
            )
            if r is None or r.status_code != 200:
                continue
            token = re.search(r'data-token="([^"]+)"', r.text)
            if token and 'id="load-more"' in r.text:
                _call(rec, "results", c.get, f"/results/{token.group(1)}", params={"offset": 60})
            if token:
                _call(
                    rec,
                    "console",
                    c.post,
                    "/console",
                    data={
                        "sql": "SELECT label, count(*) AS n FROM last_result JOIN images USING (id) GROUP BY label",
                        "result": token.group(1),
                    },
                )
            done += 1
    return done


catalog_name = "fashion"

PAGE = 60
PAGING_QUERY = "bag"


def paging_http(base: str, upto: int) -> dict:
    """Page through one large refine result over HTTP; per-page times at its start and end."""
    with httpx.Client(base_url=base, timeout=120, headers={"HX-Request": "true"}) as c:
        r = c.get("/search", params={"q": PAGING_QUERY})
        ids = re.findall(r'data-id="(\d+)"', r.text)
        r = c.post("/refine", data={"positives": ",".join(ids), "negatives": "", "model": "ensemble"})
        r.raise_for_status()
        token = re.search(r'data-token="([^"]+)"', r.text).group(1)
        total = int(re.search(r'id="result-count">([\d,]+)<', r.text).group(1).replace(",", ""))
        times = []
        for offset in range(PAGE, min(total, upto), PAGE):
            t = time.perf_counter()
            c.get(f"/results/{token}", params={"offset": offset}).raise_for_status()
            times.append((time.perf_counter() - t) * 1e3)
    return _ends(total, times)


def paging_browser(base: str, upto: int) -> dict:
    """The same in chromium: each page timed from scrolling "Load more" into view to its
    thumbnails painted."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(120_000)
        page.goto(base + "/")
        page.fill("#q", PAGING_QUERY)
        page.press("#q", "Enter")
        page.wait_for_selector("#grid .thumb")
        page.click("#all-positive")
        page.click("#refine-button")
        page.wait_for_selector(".result[data-kind=refine]")
        total = int(page.inner_text("#result-count").replace(",", ""))
        times = []
        while page.locator("#load-more").count() and page.locator("#grid .thumb").count() < upto:
            n = page.locator("#grid .thumb").count()
            t = time.perf_counter()
            page.locator("#load-more button").scroll_into_view_if_needed()
            page.wait_for_function(
                "n => document.querySelectorAll('#grid .thumb[aria-pressed]').length > n",
                arg=n,
                polling="raf",
            )
            times.append((time.perf_counter() - t) * 1e3)
        browser.close()
    return _ends(total, times)


def _ends(total: int, times: list[float]) -> dict:
    return {
        "results": total,
        "pages": len(times),
        "first_10_median_ms": float(np.median(times[:10])) if times else None,
        "last_10_median_ms": float(np.median(times[-10:])) if times else None,
        "max_ms": float(max(times)) if times else None,
    }


def _summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    return {
        "n": len(a),
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
    }


def main(argv=None) -> int:
    global catalog_name
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default="demo/fashion.duckdb")
    ap.add_argument("--url", default=None, help="an already running server (default: start one)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=10, help="search-and-refine rounds per client")
    ap.add_argument("--seconds", type=float, default=300, help="stop starting rounds after this long")
    ap.add_argument("--start-timeout", type=float, default=300)
    ap.add_argument("--paging-to", type=int, default=7000, help="page a large result up to this many (0: no)")
    ap.add_argument("--browser", action="store_true", help="page in chromium too (playwright)")
    args = ap.parse_args(argv)
    catalog_name = os.path.splitext(os.path.basename(args.catalog))[0]
    proc = None
    if args.url is None:
        port = _free_port()
        t = time.perf_counter()
        proc = start_server(args.catalog, port, args.start_timeout)
        startup_s = time.perf_counter() - t
        base = f"http://127.0.0.1:{port}"
    else:
        base, startup_s = args.url.rstrip("/"), None
    rec = Recorder()
    t0 = time.perf_counter()
    stop_at = time.time() + args.seconds
    rounds = [0] * args.clients
    threads = [
        threading.Thread(
            target=lambda k=k: rounds.__setitem__(k, client_loop(base, k, args.rounds, stop_at, rec))
        )
        for k in range(args.clients)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    paging = {}
    if args.paging_to:
        paging["http"] = paging_http(base, args.paging_to)
        if args.browser:
            paging["browser"] = paging_browser(base, args.paging_to)
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=30)
    endpoints = {}
    for name in ("search", "thumb", "refine", "results", "console"):
        endpoints[name] = {
            "client": _summary(rec.latency[name]),
            "server": _summary(rec.server[name]),
            "engine": _summary(rec.engine[name]),
            "errors": rec.errors[name],
        }
    report = {
        "benchmark": "web",
        "catalog": args.catalog,
        "clients": args.clients,
        "rounds_per_client": args.rounds,
        "rounds_done": sum(rounds),
        "wall_s": wall,
        "server_startup_s": startup_s,
        "cores": os.cpu_count(),
        "requests": sum(len(v) for v in rec.latency.values()),
        "errors": sum(rec.errors.values()),
        "error_samples": rec.error_samples,
        "endpoints": endpoints,
        "requests_per_s": sum(len(v) for v in rec.latency.values()) / wall,
        "paging": paging,
    }
    print(json.dumps(report, indent=1))
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
