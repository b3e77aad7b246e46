"""The web app through Litestar's test client: pages, fragments, JSON twins, thumbnails, the
console, and bad input answered with a clear 4xx."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

pytest.importorskip("litestar")

from litestar.testing import TestClient  # noqa: E402

from web import Settings, create_app  # noqa: E402

HX = {"HX-Request": "true"}


@pytest.fixture(scope="module")
def client(web_demo, web_demo_copy):
    """A test client over a copy of the demo catalog, with tight limits."""
    path = web_demo_copy()
    import duckdb

    con = duckdb.connect(str(web_demo), read_only=True)
    _LABELS.update(dict(con.execute("SELECT id, label FROM images").fetchall()))
    con.close()
    settings = Settings(page_size=24, sql_time_limit_s=1.0, sql_max_rows=100, results_kept=8)
    with TestClient(create_app([path], settings)) as c:
        yield c


def _ids(html: str) -> list[int]:
    """The image ids of the results grid (not of the Label next view)."""
    return [int(i) for i in re.findall(r'data-id="(\d+)"', html.split('id="next-panel"')[0])]


def _suggested(html: str) -> list[int]:
    """The image ids of the Label next view."""
    parts = html.split('id="next-panel"')
    return [int(i) for i in re.findall(r'data-id="(\d+)"', parts[1])] if len(parts) > 1 else []


_LABELS: dict[int, str] = {}


def _labels(client) -> dict[int, str]:
    return _LABELS


def test_search_page_has_every_control(client):
    r = client.get("/")
    assert r.status_code == 200
    html = r.text
    for needle in (
        'id="q"',
        'id="catalog-chooser"',
        'name="file"',
        'id="all-positive"',
        'id="all-negative"',
        'id="clear-labels"',
        'id="model"',
        'id="sampled-negatives"',
        'max="2000"',
        'id="negative-weight"',
        'id="refine-button"',
        'id="reset"',
        'id="help"',
        "/static/htmx.min.js",
    ):
        assert needle in html, needle
    from engine.limits import DEFAULT_SAMPLED_NEGATIVES

    assert (
        f'step="50" value="{DEFAULT_SAMPLED_NEGATIVES}"' in html
    )  # the slider starts at the engine's default
    for model in ("ensemble", "branch", "tree", "forest"):
        assert f'value="{model}"' in html
    assert "unpkg" not in html and "cdn" not in html.lower()
    js = client.get("/static/htmx.min.js")
    assert js.status_code == 200 and len(js.content) > 40_000


def test_text_search_returns_a_grid_of_sensible_thumbnails(client):
    r = client.get("/search", params={"q": "sneaker"}, headers=HX)
    assert r.status_code == 200
    ids = _ids(r.text)
    assert len(ids) == 24  # one page; the search itself returns 60
    labels = _labels(client)
    assert sum(labels[i] == "Sneaker" for i in ids) >= 18
    assert "ORDER BY dist, pos" in r.text and 'id="copy-sql"' in r.text
    token = re.search(r'data-token="([^"]+)"', r.text).group(1)
    more = client.get(f"/results/{token}", params={"offset": 24}, headers=HX)
    assert len(_ids(more.text)) == 24 and not set(_ids(more.text)) & set(ids)


def test_refine_returns_every_positive_with_stats_sql_and_paging(client):
    labels = _labels(client)
    found = client.get("/api/search", params={"q": "ankle boot", "k": 60}).json()["ids"]
    pos = [i for i in found if labels[i] == "Ankle boot"][:8]
    neg = [i for i in found if labels[i] != "Ankle boot"][:2]
    r = client.post(
        "/refine",
        data={
            "positives": ",".join(map(str, pos)),
            "negatives": ",".join(map(str, neg)),
            "model": "forest",
            "sampled_negatives": "500",
            "negative_weight": "5",
        },
        headers=HX,
    )
    assert r.status_code == 200, r.text
    total = int(re.search(r'id="result-count">([\d,]+)<', r.text).group(1).replace(",", ""))
    for needle in ("sample", "train", "query", "% of the catalog", "SELECT id, votes"):
        assert needle in r.text
    api = client.post(
        "/api/refine",
        json={
            "positives": ",".join(map(str, pos)),
            "negatives": ",".join(map(str, neg)),
            "model": "forest",
            "sampled_negatives": 500,
            "negative_weight": 5,
        },
        params={"limit": 5000},
    ).json()
    assert api["results"] == total and api["stats"]["model"] == "forest"
    got = [labels[i] for i in api["ids"]]
    assert got.count("Ankle boot") >= 0.8 * len(got)
    # paging reaches every result, in the engine's order
    token = re.search(r'data-token="([^"]+)"', r.text).group(1)
    seen, offset = _ids(r.text), 24
    while offset < total:
        page = client.get(f"/results/{token}", params={"offset": offset}, headers=HX).text
        seen += _ids(page)
        offset += 24
    assert len(seen) == total
    # the Label next view: the round's suggestions, unlabelled, distinct, as the JSON twin has them
    suggested = _suggested(r.text)
    assert len(suggested) == len(set(suggested)) == 24 and not set(suggested) & {*pos, *neg}
    assert set(suggested) <= set(labels) and 'id="tab-next"' in r.text
    assert api["suggestions"] == suggested


def test_more_like_this_and_image_upload(client, web_demo):
    labels = _labels(client)
    bag = next(i for i, lab in labels.items() if lab == "Bag")
    r = client.get("/similar", params={"id": bag}, headers=HX)
    assert r.status_code == 200 and _ids(r.text)[0] == bag
    uri = client.post("/api/sql", json={"sql": f"SELECT uri FROM images WHERE id = {bag}"}).json()["rows"][0][
        "uri"
    ]
    with open(uri, "rb") as f:
        r = client.post("/search/image", files={"file": ("bag.png", f.read(), "image/png")}, headers=HX)
    assert r.status_code == 200
    assert sum(labels[i] == "Bag" for i in _ids(r.text)) >= 12


def test_thumbnails_keep_aspect_ratio_and_are_cached(client, web_demo, tmp_path):
    r = client.get("/api/search", params={"q": "bag", "k": 1}).json()
    image_id = r["ids"][0]
    t = client.get(f"/thumb/fashion/{image_id}")
    assert t.status_code == 200 and t.headers["content-type"].startswith("image/")
    assert "max-age" in t.headers["cache-control"] and t.headers["etag"]
    with Image.open(io.BytesIO(t.content)) as im:
        assert im.size == (28, 28)  # small originals are served as they are
    again = client.get(f"/thumb/fashion/{image_id}", headers={"If-None-Match": t.headers["etag"]})
    assert again.status_code == 304
    full = client.get(f"/image/fashion/{image_id}")
    assert full.status_code == 200 and full.content[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "url",
    [
        "/thumb/fashion/99999999",
        "/thumb/fashion/-5",
        "/image/fashion/424242424",
        "/thumb/nosuchcatalog/1",
        "/thumb/fashion/12abc",
        "/results/expired-token",
        "/result/expired-token",
        "/image-info/fashion/424242424",
        "/image-info/nosuchcatalog/1",
    ],
)
def test_unknown_ids_catalogs_and_tokens_are_404(client, url):
    r = client.get(url)
    assert r.status_code == 404
    assert "Traceback" not in r.text


@pytest.mark.parametrize("q", ["a/b", "what?", "#1 hit", 'it\'s "quoted"', "sneaker 👟", "ünïcödé", "%20%00"])
def test_odd_queries_work(client, q):
    r = client.get("/search", params={"q": q}, headers=HX)
    assert r.status_code == 200 and len(_ids(r.text)) == 24


@pytest.mark.parametrize(
    "params, status, message",
    [
        ({"q": ""}, 400, "empty"),
        ({"q": "   "}, 400, "empty"),
        ({"q": "x" * 10_000}, 400, "limit is 1000"),
        ({"q": "x" * 30_000}, 400, ""),
        ({"q": "shoe", "k": "abc"}, 400, "k"),
        ({"q": "shoe", "k": "0"}, 400, "k"),
        ({"q": "shoe", "catalog": "nope"}, 404, "no catalog named"),
    ],
)
def test_bad_searches_get_a_clear_4xx(client, params, status, message):
    r = client.get("/search", params=params, headers=HX)
    assert r.status_code == status
    assert message in r.text and 'class="error"' in r.text and "Traceback" not in r.text


@pytest.mark.parametrize(
    "form, status, message",
    [
        ({"positives": ""}, 400, "at least one image as positive"),
        ({"positives": "1,99999999"}, 404, "99999999"),
        ({"positives": "abc"}, 400, "not an integer"),
        ({"positives": "1", "negatives": "1"}, 400, "both positive and negative"),
        ({"positives": "1", "sampled_negatives": "abc"}, 400, "sampled_negatives"),
        ({"positives": "1", "sampled_negatives": "5000"}, 400, "0..2000"),
        ({"positives": "1", "negative_weight": "heavy"}, 400, "negative_weight"),
        ({"positives": "1", "negative_weight": "0"}, 400, "1..100"),
        ({"positives": "1", "model": "svm"}, 400, "unknown model"),
    ],
)
def test_bad_refines_get_a_clear_4xx(client, form, status, message):
    r = client.post("/refine", data=form, headers=HX)
    assert r.status_code == status, r.text
    assert message in r.text and "Traceback" not in r.text


@pytest.mark.parametrize("payload", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50])
def test_corrupt_uploads_get_a_clear_4xx(client, payload):
    r = client.post("/search/image", files={"file": ("x.png", payload, "image/png")}, headers=HX)
    assert r.status_code == 400 and 'class="error"' in r.text
    assert "empty" in r.text or "cannot be used" in r.text


def test_console_runs_queries_and_shows_ids_as_thumbnails(client):
    r = client.post("/console", data={"sql": "SELECT id, label FROM images ORDER BY id LIMIT 3"}, headers=HX)
    assert r.status_code == 200
    assert r.text.count("<tr>") == 4 and r.text.count('class="mini"') == 3
    r = client.post("/console", data={"sql": "SELECT id FROM codes"}, headers=HX)
    assert "cut at 100" in r.text


def test_console_combines_the_last_result_with_metadata(client):
    labels = _labels(client)
    found = client.get("/search", params={"q": "sneaker"}, headers=HX)
    token = re.search(r'data-token="([^"]+)"', found.text).group(1)
    sql = "SELECT r.id FROM last_result r JOIN images USING (id) WHERE label = 'Sneaker' ORDER BY r.rank"
    rows = client.post("/api/sql", json={"sql": sql, "result": token}).json()["rows"]
    assert rows and all(labels[r["id"]] == "Sneaker" for r in rows)
    macro = client.post(
        "/api/sql", json={"sql": "SELECT id FROM result_images() WHERE label = 'Sneaker'", "result": token}
    ).json()["rows"]
    assert macro == rows
    r = client.post("/api/sql", json={"sql": "SELECT count(*) AS n FROM last_result"})  # which result?
    assert r.status_code == 400 and "result" in r.json()["detail"]


@pytest.mark.parametrize(
    "sql, message",
    [
        ("COPY images TO '/tmp/leak.csv'", "not COPY"),
        ("ATTACH '/tmp/x.duckdb'", "not ATTACH"),
        ("SELECT * FROM read_csv('/etc/passwd')", "not available"),
        ("INSTALL httpfs", "not"),
        ("DROP TABLE images", "not DROP"),
        ("SELECT 1; SELECT 2", "exactly one statement"),
        ("SELEC nonsense", "syntax error"),
    ],
)
def test_console_refuses_escapes_with_duckdbs_message(client, sql, message):
    r = client.post("/console", data={"sql": sql}, headers=HX)
    assert r.status_code == 400 and message in r.text and "Traceback" not in r.text


def test_console_stops_an_endless_query(client):
    endless = "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t"
    r = client.post("/console", data={"sql": endless}, headers=HX)
    assert r.status_code == 408 and "longer than 1 s" in r.text


def test_console_query_that_outgrows_memory_is_stopped_and_the_server_answers(client):
    """DuckDB's memory_limit does not bound every allocation: this one took GBs in-process."""
    r = client.post(
        "/api/sql", json={"sql": "SELECT damerau_levenshtein(repeat('a', 40000), repeat('b', 40000))"}
    )
    assert r.status_code in (400, 408) and (
        "memory" in r.json()["detail"] or "longer than" in r.json()["detail"]
    )
    assert client.get("/api/health").status_code == 200
    ok = client.post("/api/sql", json={"sql": "SELECT 41 + 1 AS n"})
    assert ok.status_code == 200 and ok.json()["rows"] == [{"n": 42}]


def test_console_output_is_capped_by_bytes_and_says_so(client):
    big = "SELECT repeat('<', 1000000) AS v, v AS w, v AS x FROM range(500)"
    r = client.post("/api/sql", json={"sql": big})
    body = r.json()
    assert r.status_code == 200 and body["truncated"] and body["cut"] == "bytes"
    assert len(r.content) < 2_500_000 and all(len(row["v"]) <= 10_001 for row in body["rows"])
    page = client.post("/console", data={"sql": big}, headers=HX)
    assert page.status_code == 200 and len(page.content) < 2_500_000
    assert "bytes of output" in page.text and "&lt;&lt;" in page.text and "<<" not in page.text
    huge = client.post(
        "/console", data={"sql": "SELECT repeat('x', 20000000) AS v FROM range(120)"}, headers=HX
    )
    assert huge.status_code in (200, 400) and len(huge.content) < 2_500_000
    assert "Traceback" not in huge.text and huge.headers["content-type"].startswith("text/html")


def test_a_busy_catalog_answers_503_with_retry_after_and_recovers(client):
    served = client.app.state.cb.catalogs["fashion"]
    taken = 0
    while served.gate.acquire(blocking=False):
        taken += 1
    try:
        assert taken == 4
        for r in (
            client.get("/search", params={"q": "bag"}, headers=HX),
            client.get("/api/search", params={"q": "bag"}),
            client.post("/api/refine", json={"positives": "1,2"}),
        ):
            assert r.status_code == 503 and r.headers["retry-after"] == "2" and "busy" in r.text
        assert client.get("/api/health").status_code == 200
    finally:
        for _ in range(taken):
            served.gate.release()
    assert client.get("/api/search", params={"q": "bag"}).status_code == 200


def test_console_queries_beyond_the_workers_are_refused_busy(client):
    pool = client.app.state.cb.catalogs["fashion"].console
    held = [pool._take() for _ in range(pool.size)]  # as if two endless queries were running
    try:
        r = client.post("/api/sql", json={"sql": "SELECT 1"})
        assert r.status_code == 503 and "busy" in r.json()["detail"] and r.headers["retry-after"] == "2"
    finally:
        for w in held:
            pool._give_back(w, True)
    assert client.post("/api/sql", json={"sql": "SELECT 1 AS n"}).json()["rows"] == [{"n": 1}]


def test_refine_with_too_many_labels_is_refused_with_the_limit(client):
    positives = ",".join(str(i) for i in range(1500))
    negatives = ",".join(str(i) for i in range(1500, 3000))
    r = client.post("/api/refine", json={"positives": positives, "negatives": negatives})
    assert (
        r.status_code == 400
        and "at most 2000 labels" in r.json()["detail"]
        and "got 3000" in r.json()["detail"]
    )


def test_openapi_schema_declares_every_route(client):
    schema = client.get("/schema/openapi.json").json()
    paths = schema["paths"]
    for p in (
        "/",
        "/search",
        "/similar",
        "/search/image",
        "/refine",
        "/results/{token}",
        "/thumb/{catalog}/{image_id}",
        "/image/{catalog}/{image_id}",
        "/console",
        "/api/search",
        "/api/refine",
        "/api/sql",
        "/api/health",
    ):
        assert p in paths, p
    params = {p["name"] for p in paths["/search"]["get"]["parameters"]}
    assert {"q", "k", "catalog"} <= params


def test_health_reports_rows_connections_and_results_kept(client):
    health = client.get("/api/health")
    assert health.status_code == 200
    body = health.json()
    rows = client.post("/api/sql", json={"sql": "SELECT count(*) AS n FROM codes"}).json()["rows"][0]["n"]
    assert body["status"] == "ok" and body["catalogs"] == {
        "fashion": {
            "rows": rows,
            "duckdb_connections": 1,
            "console_queries": 0,
            "version": 0,
            "pending": 0,
            "status": "",
            "write_ms": 0.0,
        }
    }
    client.get("/search", params={"q": "bag"}, headers=HX)
    body = client.get("/api/health").json()
    assert 1 <= body["results_cached"] <= 8 and body["result_ids_cached"] >= 60
    assert client.get("/api/health", params={"catalog": "fashion"}).json()["catalogs"].keys() == {"fashion"}
    assert client.get("/api/health", params={"catalog": "nope"}).status_code == 404
    schema = client.get("/schema/openapi.json").json()
    ref = schema["paths"]["/api/health"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ref == {"$ref": "#/components/schemas/Health"}


def test_failed_and_stopped_queries_close_their_cursors(client):
    endless = "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t"
    for sql in (
        endless,
        "SELEC nonsense",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT 1; SELECT 2",
        "SELECT id FROM codes",
    ):
        client.post("/console", data={"sql": sql}, headers=HX)
        client.post("/api/sql", json={"sql": sql, "result": "expired-token"})
    client.get("/thumb/fashion/99999999")
    assert client.get("/api/health").json()["catalogs"]["fashion"]["duckdb_connections"] == 1


def test_settings_are_documented():
    help_ = Settings.help()
    assert set(help_) == set(Settings.__dataclass_fields__) and all(help_.values())


def test_result_store_is_bounded_by_entries_and_ids():
    import numpy as np

    import engine
    from web.state import Results

    def result(n):
        return engine.Result(np.arange(n), np.zeros(n, np.int64), "", {})

    store = Results(capacity=3, max_ids=100)
    a = store.put("c", result(60))
    b = store.put("c", result(30))
    assert store.get(a)[1].ids.size == 60
    c = store.put("c", result(20))  # 110 ids: the least recently used (b) goes
    with pytest.raises(Exception, match="no longer kept"):
        store.get(b)
    assert store.get(a) and store.get(c)
    big = store.put("c", result(500))  # alone above the bound, the newest result is still kept
    assert store.get(big)[1].ids.size == 500
    with pytest.raises(Exception, match="no longer kept"):
        store.get(a)


def test_a_crafted_png_of_88_megapixels_is_refused_before_it_is_decoded(client, png_bomb):
    from engine.limits import QUERY_MAX_PIXELS

    r = client.post("/search/image", files={"file": ("bomb.png", png_bomb, "image/png")}, headers=HX)
    assert r.status_code == 400 and f"the limit is {QUERY_MAX_PIXELS:,}" in r.text
    assert "89,478,485" not in r.text and "MAX_IMAGE_PIXELS" not in r.text
    import base64

    r = client.post("/api/search", json={"image_base64": base64.b64encode(png_bomb).decode()})
    assert r.status_code == 400 and "scale the image down" in r.json()["detail"]


def test_search_by_image_without_a_file_says_to_choose_one(client):
    r = client.post(
        "/search/image", data={"k": "10"}, files={"other": ("x.txt", b"", "text/plain")}, headers=HX
    )
    assert (
        r.status_code == 400 and "choose an image file" in r.text and "missing required field" not in r.text
    )
    r = client.post("/search/image", files={"file": ("", b"", "application/octet-stream")}, headers=HX)
    assert r.status_code == 400 and "choose an image file" in r.text


def test_query_images_are_decoded_a_few_at_a_time(client, monkeypatch):
    import threading
    import time

    import web.state as web_app

    app = client.app.state.cb
    running, peak, lock = [0], [0], threading.Lock()

    def slow_decode(blob):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return Image.new("RGB", (8, 8))

    monkeypatch.setattr(web_app, "decode_query_image", slow_decode)
    monkeypatch.setattr(web_app, "DECODE_WAIT_S", 0.05)
    outcomes = []

    def one():
        try:
            app.query_image(b"x")
            outcomes.append("decoded")
        except web_app.ServerBusy as e:
            outcomes.append(str(e))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == web_app.DECODES_AT_ONCE
    assert outcomes.count("decoded") >= web_app.DECODES_AT_ONCE
    assert all(o == "decoded" or "busy decoding" in o for o in outcomes) and len(outcomes) == 6


def test_a_catalog_named_with_url_characters_keeps_working_links(web_demo):
    import html as html_lib
    import shutil
    from urllib.parse import parse_qs, urlsplit

    root = web_demo.parent.parent / "odd-name"
    root.mkdir(exist_ok=True)
    path = root / "bags #1 & 50%+.duckdb"
    shutil.copy(web_demo, path)
    side = root / f"{path.name}.d"
    if not side.exists():
        side.symlink_to(f"{web_demo}.d")
    name = "bags #1 & 50%+"
    with TestClient(create_app([path, web_demo])) as c:
        page = c.get("/", params={"catalog": name}).text
        links = [html_lib.unescape(u) for u in re.findall(r'(?:href|src|hx-get)="([^"]+)"', page)]
        for link in (u for u in links if "catalog=" in u):
            assert parse_qs(urlsplit(link).query)["catalog"] == [name], link
        r = c.get("/search", params={"catalog": name, "q": "bag"}, headers=HX)
        assert r.status_code == 200
        urls = [html_lib.unescape(u) for u in re.findall(r'(?:src|href|hx-get)="([^"#][^"]*)"', r.text)]
        thumbs = [u for u in urls if u.startswith("/thumb/")]
        similar = [u for u in urls if u.startswith("/similar")]
        opened = [u for u in urls if u.startswith("/image/")]
        assert thumbs and similar and opened
        assert c.get(thumbs[0]).status_code == 200
        assert c.get(opened[0]).status_code == 200
        assert parse_qs(urlsplit(similar[0]).query)["catalog"] == [name]
        assert c.get(similar[0], headers=HX).status_code == 200


def test_an_image_sent_as_a_form_field_without_a_filename_gets_a_400(client):
    body = (
        b'--xx\r\nContent-Disposition: form-data; name="file"\r\n\r\n\x89PNG\r\n\x1a\n\x00\x00\xff\r\n'
        b"--xx--\r\n"
    )
    r = client.post(
        "/search/image", content=body, headers={"Content-Type": "multipart/form-data; boundary=xx"}
    )
    assert r.status_code == 400 and "with a filename" in r.json()["detail"]


def test_a_kept_result_is_shown_again_as_it_was(client):
    r = client.get("/search", params={"q": "bag"}, headers=HX)
    ids = _ids(r.text)
    form = {"positives": ",".join(map(str, ids[:10])), "negatives": "", "model": "branch", "seed": "1"}
    refined = client.post("/refine", data=form, headers=HX)
    token = re.search(r'data-token="([^"]+)"', refined.text).group(1)
    total = int(re.search(r'id="result-count">([\d,]+)<', refined.text).group(1).replace(",", ""))
    again = client.get(f"/result/{token}", params={"shown": 1000}, headers=HX)
    assert again.status_code == 200 and f'data-token="{token}"' in again.text  # not recomputed
    pages, offset = _ids(refined.text), 24
    while offset < min(total, 1000):
        pages += _ids(client.get(f"/results/{token}", params={"offset": offset}, headers=HX).text)
        offset += 24
    assert _ids(again.text) == pages[:1000] and len(pages) == total
    assert 'id="end-of-results"' in again.text or total > 1000
    assert "votes" in again.text  # the score's meaning, for a fine-tune
    assert client.get(f"/result/{token}", params={"shown": 10**9}, headers=HX).status_code == 400


def test_the_viewer_gets_an_images_metadata_without_bookkeeping(client):
    r = client.get("/image-info/fashion/5", headers=HX)
    assert r.status_code == 200
    assert "<dt>label</dt><dd>" + _LABELS[5] + "</dd>" in r.text
    assert "file_mtime_ns" not in r.text and "embedding_part" not in r.text


def test_the_console_lists_the_catalogs_tables_not_duckdbs_own(client):
    r = client.get("/console")
    listed = re.findall(r"<li><code>([^<]+)</code>", r.text)
    assert "images" in listed and "codes" in listed
    assert not [t for t in listed if t.startswith(("duckdb_", "sqlite_", "pragma_"))]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_result_exports_with_its_metadata_in_order(client, fmt):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    r = client.get("/search", params={"q": "sandal"}, headers=HX)
    token = re.search(r'data-token="([^"]+)"', r.text).group(1)
    got = client.get(f"/export/{token}", params={"format": fmt})
    assert got.status_code == 200 and "attachment" in got.headers["content-disposition"]
    table = (pacsv.read_csv if fmt == "csv" else pq.read_table)(io.BytesIO(got.content))
    total = int(re.search(r'id="result-count">([\d,]+)<', r.text).group(1))
    shown = _ids(r.text)  # the first page
    assert table.num_rows == total > len(shown) and table.column("id").to_pylist()[: len(shown)] == shown
    assert table.column("rank").to_pylist() == list(range(1, total + 1))
    assert table.column("label").to_pylist() == [_LABELS[i] for i in table.column("id").to_pylist()]
    assert "distance" in table.column_names and "file_mtime_ns" not in table.column_names
    assert client.get(f"/export/{token}", params={"format": "xlsx"}).status_code == 400
    assert client.get("/export/no-such-token").status_code == 404


def test_the_console_downloads_csv_under_its_limits(client):
    r = client.post("/console/csv", data={"sql": "SELECT id, label FROM images ORDER BY id LIMIT 5"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    lines = r.text.strip().splitlines()
    assert lines[0] == '"id","label"' and len(lines) == 6
    capped = client.post("/console/csv", data={"sql": "SELECT id FROM images"})
    assert len(capped.text.strip().splitlines()) == 100 + 1  # the console's row limit (sql_max_rows)
    bad = client.post("/console/csv", data={"sql": "SELECT * FROM read_csv('/etc/passwd')"})
    assert bad.status_code == 400 and "root:" not in bad.text


@pytest.mark.parametrize(
    "sql, cell",
    [
        ("SELECT '\\xAA'::BLOB AS v", '"\\xaa"'),
        ("SELECT [1, 2] AS v", '"[1, 2]"'),
        ("SELECT '101'::BITSTRING AS v", None),
    ],
)
def test_the_console_csv_writes_values_arrow_cannot(client, sql, cell):
    r = client.post("/console/csv", data={"sql": sql})
    assert r.status_code == 200 and r.text.splitlines()[0] == '"v"'
    if cell is not None:
        assert r.text.splitlines()[1] == cell
