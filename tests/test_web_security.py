"""The web app against hostile input from outside the browser tab: catalogs whose ``uri`` points at
files that are no ingested image, files swapped after ingestion, and other web sites (DNS
rebinding, cross-site posts). Every attack must be refused, and a refusal never carries the file."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

pytest.importorskip("litestar")

from litestar.testing import TestClient  # noqa: E402

import engine  # noqa: E402
from engine.errors import InvalidArgument  # noqa: E402
from web import Settings, create_app  # noqa: E402
from web.guard import AllowedHosts  # noqa: E402

SECRET = b"TOP-SECRET-3f9c1a: the user's private notes\n"
HX = {"HX-Request": "true"}
SETTINGS = Settings(page_size=24, sql_time_limit_s=1.0, sql_max_rows=100, results_kept=8)
HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "no-referrer"}


def _stat_columns(path) -> dict:
    st = os.stat(path)
    return {"uri": str(path), "file_size": st.st_size, "file_mtime_ns": st.st_mtime_ns}


@pytest.fixture(scope="module")
def crafted(web_demo_copy, tmp_path_factory):
    """A catalog imported from an export of the demo whose ``images.parquet`` was edited: some uris
    point at a secret text file and at /etc/passwd (with their true sizes and times, the attacker's
    best case), others at image files of this test (PNG, JPEG, WebP, GIF, TIFF), recorded as
    ingestion records them. Returns ``(catalog path, {name: image id}, {name: file})``."""
    root = tmp_path_factory.mktemp("crafted")
    files = root / "files"
    files.mkdir()
    secret = files / "notes.txt"
    secret.write_bytes(SECRET * 20)
    export = root / "export"
    with engine.Catalog.open(web_demo_copy(), read_only=True) as cat:
        ids = cat.sql("SELECT id, uri FROM images ORDER BY id LIMIT 12").to_pylist()
        cat.export_parquet(export)
    demo_png = ids[0]["uri"]
    paths = {
        "secret": secret,
        "passwd": "/etc/passwd",
        "fifo": files / "fifo.png",
        "folder": files / "folder.png",
    }
    os.mkfifo(paths["fifo"])
    paths["folder"].mkdir()
    for name in ("small", "swapped", "changed", "replaced"):
        paths[name] = files / f"{name}.png"
        shutil.copyfile(demo_png, paths[name])
    rng_pixels = Image.effect_noise((600, 400), 60).convert("RGB")
    for name, fmt in (("big", "JPEG"), ("webp", "WEBP"), ("gif", "GIF"), ("tiff", "TIFF")):
        paths[name] = files / f"{name}.{fmt.lower()}"
        rng_pixels.save(paths[name], fmt)
    names = list(paths)
    assert len(names) <= len(ids)
    image_ids = {name: ids[i]["id"] for i, name in enumerate(names)}

    table = pq.read_table(export / "images.parquet")
    rows = table.to_pylist()
    by_id = {image_ids[n]: n for n in names}
    for row in rows:
        name = by_id.get(row["id"])
        if name is None:
            continue
        path = paths[name]
        st = os.stat(path)
        row.update(uri=str(path), file_size=st.st_size, file_mtime_ns=st.st_mtime_ns)
        if name in ("big", "webp", "gif", "tiff"):
            row.update(width=600, height=400)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), export / "images.parquet")
    path = root / "crafted.duckdb"
    engine.Catalog.import_parquet(export, path).close()
    return path, image_ids, paths


@pytest.fixture(scope="module")
def client(crafted):
    path, _, _ = crafted
    with TestClient(create_app([path], SETTINGS, warm_up=False)) as c:
        yield c


def _get(client, kind: str, image_id: int):
    return client.get(f"/{kind}/crafted/{image_id}")


# -- A: only the ingested image files are served ----------------------------------------------
@pytest.mark.parametrize("name", ["secret", "passwd"])
@pytest.mark.parametrize("kind", ["image", "thumb"])
def test_a_uri_pointing_at_a_text_file_is_refused(client, crafted, kind, name):
    _, ids, _ = crafted
    r = _get(client, kind, ids[name])
    assert r.status_code == 403, r.text
    assert "not an image" in r.json()["detail"]
    assert b"TOP-SECRET" not in r.content and b"root:" not in r.content


@pytest.mark.parametrize("name", ["fifo", "folder"])
def test_a_uri_pointing_at_no_regular_file_is_refused(client, crafted, name):
    _, ids, _ = crafted
    for kind in ("image", "thumb"):
        r = _get(client, kind, ids[name])
        assert r.status_code == 403 and "not a regular file" in r.json()["detail"], r.text


@pytest.mark.parametrize("kind", ["image", "thumb"])
def test_an_image_swapped_for_a_link_after_ingestion_is_refused(client, crafted, kind, tmp_path):
    _, ids, paths = crafted
    target = paths["swapped"]
    assert _get(client, kind, ids["swapped"]).status_code == 200  # checked and remembered
    aside = tmp_path / "ingested.png"
    shutil.copy2(target, aside)
    try:
        target.unlink()
        target.symlink_to(paths["secret"])
        r = _get(client, kind, ids["swapped"])
        assert r.status_code == 403 and "has changed since it was ingested" in r.json()["detail"], r.text
        assert b"TOP-SECRET" not in r.content
        # a link to a file of the very size and time recorded must still decode as an image
        fake = tmp_path / "fake.png"
        fake.write_bytes((SECRET * (1 + aside.stat().st_size // len(SECRET)))[: aside.stat().st_size])
        os.utime(fake, ns=(aside.stat().st_atime_ns, aside.stat().st_mtime_ns))
        target.unlink()
        target.symlink_to(fake)
        r = _get(client, kind, ids["swapped"])
        assert r.status_code == 403 and "not an image" in r.json()["detail"], r.text
        assert b"TOP-SECRET" not in r.content
        # a link to the very file ingested (same bytes, size and time) is that image
        target.unlink()
        target.symlink_to(aside)
        r = _get(client, kind, ids["swapped"])
        assert r.status_code == 200 and r.headers["content-type"].startswith("image/")
    finally:
        target.unlink(missing_ok=True)
        shutil.copy2(aside, target)
    assert _get(client, kind, ids["swapped"]).status_code == 200


def test_a_folder_of_links_ingested_is_shown(tmp_path):
    """Ingestion follows links to image files, and the server shows what was ingested."""
    from engine.ingest import ingest

    photos, links = tmp_path / "photos", tmp_path / "links"
    photos.mkdir()
    links.mkdir()
    for i in range(3):
        Image.effect_noise((64, 48), 40 + i).convert("RGB").save(photos / f"p{i}.png")
        (links / f"p{i}.png").symlink_to(photos / f"p{i}.png")
    path = tmp_path / "links.duckdb"
    with engine.Catalog.create(path) as cat:
        report = ingest(cat, [str(links)], _TinyEncoder(), workers=0, progress=False)
        assert report.added == 3
        ids = cat.sql("SELECT id FROM images ORDER BY id").column("id").to_pylist()
        rng = np.random.default_rng(0)
        cat.replace_codes(rng.integers(0, 256, (3, 32), dtype=np.uint8), ids)
        cat.build_index()
    with TestClient(create_app([path], SETTINGS, warm_up=False)) as c:
        for image_id in ids:
            for kind in ("image", "thumb"):
                r = c.get(f"/{kind}/links/{image_id}")
                assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n", r.text


class _TinyEncoder:
    """Enough of an encoder for ingestion: 8-d vectors of an image's mean colours."""

    id = "test:tiny"
    dim = 8
    batch_size = 4
    device = "cpu"

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image.resize((4, 4)), dtype=np.float32) / 255.0

    def encode_images(self, batch) -> np.ndarray:
        x = np.asarray(batch, dtype=np.float32).reshape(len(batch), -1)
        return np.concatenate([x[:, :4], x[:, -4:]], axis=1)

    def encode_texts(self, texts):
        raise NotImplementedError


def test_a_file_changed_after_ingestion_is_refused(client, crafted):
    _, ids, paths = crafted
    target = paths["changed"]
    assert _get(client, "image", ids["changed"]).status_code == 200
    before = os.stat(target)
    original = target.read_bytes()
    try:
        target.write_bytes(SECRET)  # other bytes, another size
        for kind in ("image", "thumb"):
            r = _get(client, kind, ids["changed"])
            assert r.status_code == 403 and "changed since it was ingested" in r.json()["detail"], r.text
            assert b"TOP-SECRET" not in r.content
        target.write_bytes(original)  # the same bytes, but another modification time
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
        assert _get(client, "image", ids["changed"]).status_code == 403
    finally:
        target.write_bytes(original)
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert _get(client, "image", ids["changed"]).status_code == 200


def test_a_file_replaced_by_another_of_the_same_size_and_time_is_checked_again(client, crafted, tmp_path):
    """The decoding check is remembered per file version, and a new file (inode) is a new version."""
    _, ids, paths = crafted
    target = paths["replaced"]
    assert _get(client, "image", ids["replaced"]).status_code == 200
    before = os.stat(target)
    original = target.read_bytes()
    fake = tmp_path / "fake.png"
    fake.write_bytes((SECRET * (before.st_size // len(SECRET) + 1))[: before.st_size])
    os.utime(fake, ns=(before.st_atime_ns, before.st_mtime_ns))
    try:
        os.replace(fake, target)
        r = _get(client, "image", ids["replaced"])
        assert r.status_code == 403 and "not an image" in r.json()["detail"], r.text
        assert b"TOP-SECRET" not in r.content
    finally:
        target.write_bytes(original)
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize(
    "name, media",
    [
        ("small", "image/png"),
        ("big", "image/jpeg"),
        ("webp", "image/webp"),
        ("gif", "image/gif"),
        ("tiff", "image/png"),
    ],
)
def test_an_ingested_image_is_shown_inline_with_its_own_type(client, crafted, name, media):
    _, ids, paths = crafted
    r = _get(client, "image", ids[name])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == media
    assert r.headers["content-disposition"] == "inline"
    assert r.headers["x-content-type-options"] == "nosniff"
    with Image.open(io.BytesIO(r.content)) as im:
        assert im.size == Image.open(paths[name]).size
    if name != "tiff":
        assert r.content == paths[name].read_bytes()
    thumb = _get(client, "thumb", ids[name])
    assert thumb.status_code == 200 and thumb.headers["content-type"] in ("image/png", "image/jpeg")
    with Image.open(io.BytesIO(thumb.content)) as im:
        assert max(im.size) <= 256


def test_rows_without_a_recorded_file_are_not_served(make_catalog, tmp_path, codegen, rng):
    """Rows added as codes, with a uri as metadata but no file size and time, could name any file."""
    cat = make_catalog(
        codegen.uniform(rng, 50),
        metadata={"uri": [str(tmp_path / "x.png")] * 50},
        block_size=16,
        name="codes_only.duckdb",
    )
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    cat.close()
    with TestClient(create_app([tmp_path / "codes_only.duckdb"], SETTINGS, warm_up=False)) as c:
        image_id = c.post("/api/sql", json={"sql": "SELECT min(id) AS id FROM images"}).json()["rows"][0][
            "id"
        ]
        for kind in ("image", "thumb"):
            r = c.get(f"/{kind}/codes_only/{image_id}")
            assert r.status_code == 403 and "no recorded file size" in r.json()["detail"], r.text


def test_the_open_link_shows_the_image_in_the_browser(client, crafted):
    """The results grid's "open" link is the inline /image URL, not a download."""
    _, ids, _ = crafted
    html = client.get("/similar", params={"id": ids["small"], "catalog": "crafted"}, headers=HX).text
    link = re.search(rf'<a href="(/image/crafted/{ids["small"]})"[^>]*class="open"', html)
    assert link, html[:500]
    r = client.get(link.group(1))
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/")
    assert r.headers["content-disposition"] == "inline"


# -- B: other web sites ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:8000",
        "127.0.0.1.evil.example",
        "localhost.evil",
        "[::2]",
        "bad host",
        "a:b:c",
    ],
)
def test_a_foreign_host_is_refused(client, host):
    for r in (
        client.get("/api/health", headers={"Host": host}),
        client.post("/api/sql", json={"sql": "SELECT 1 AS n"}, headers={"Host": host}),
        client.get("/no/such/path", headers={"Host": host}),
    ):
        assert r.status_code == 400, (host, r.text)
        assert "allowed_hosts" in r.json()["detail"]
        assert r.headers["content-security-policy"]


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:8000",
        "127.0.0.1",
        "127.0.0.1:1234",
        "[::1]",
        "[::1]:8000",
        "LOCALHOST:8000",
        "testserver.local",
    ],
)
def test_local_hosts_and_the_servers_own_address_are_answered(client, host):
    assert client.get("/api/health", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(
    "server, host, allowed",
    [
        (("192.168.1.5", 8000), "192.168.1.5", True),
        (("192.168.1.5", 8000), "192.168.1.6", False),
        (("::ffff:192.0.2.1", 8000), "192.0.2.1", True),
        (("fd00::5", 8000), "[fd00::5]", True),
        (("0.0.0.0", 8000), "evil.example", False),
        (None, "evil.example", False),
        (None, "localhost", True),
    ],
)
def test_the_address_a_connection_came_in_on_is_its_own_host(server, host, allowed):
    """``--host 0.0.0.0`` serves the machine's addresses: a connection to one may name it."""
    assert AllowedHosts.parse("").allow({"server": server}, host, "8000") is allowed


def test_allowed_hosts_setting_extends_the_hosts(crafted):
    path, _, _ = crafted
    settings = Settings.parse(["allowed_hosts=photos.lan, box:9000,[fd00::1]"])
    with TestClient(create_app([path], settings, warm_up=False)) as c:
        for host, status in (
            ("photos.lan", 200),
            ("photos.lan:8443", 200),
            ("box:9000", 200),
            ("box", 400),
            ("box:9001", 400),
            ("[fd00::1]:80", 200),
            ("localhost:8000", 200),
            ("evil.example", 400),
        ):
            assert c.get("/api/health", headers={"Host": host}).status_code == status, host
    with TestClient(create_app([path], Settings(allowed_hosts="*"), warm_up=False)) as c:
        assert c.get("/api/health", headers={"Host": "anything.example"}).status_code == 200
    with pytest.raises(InvalidArgument, match="allowed_hosts"):
        create_app([path], Settings(allowed_hosts="good.lan, http://bad/"), warm_up=False)


def _refine_form(crafted) -> dict:
    _, ids, _ = crafted
    return {"positives": f"{ids['small']},{ids['big']}", "sampled_negatives": "50", "catalog": "crafted"}


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "null"},
        {"Origin": "http://localhost:9999"},  # another port is another origin
        {"Origin": "http://testserver.local:8080"},
        {"Origin": "https://testserver.local.evil.example"},
        {"Origin": "http://[::1"},  # malformed
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://testserver.local", "Sec-Fetch-Site": "cross-site"},
    ],
)
def test_a_cross_origin_post_is_refused(client, crafted, headers):
    form = _refine_form(crafted)
    for path, kwargs in (
        ("/refine", {"data": form}),
        ("/api/refine", {"json": form}),
        ("/api/sql", {"json": {"sql": "SELECT 1 AS n"}}),
        ("/console", {"data": {"sql": "SELECT 1"}}),
        ("/search/image", {"files": {"file": ("x.png", b"\x89PNG", "image/png")}}),
    ):
        r = client.post(path, headers={**HX, **headers}, **kwargs)
        assert r.status_code == 403 and "cross-origin request refused" in r.json()["detail"], (path, r.text)
        assert "votes" not in r.text and '"rows"' not in r.text


def test_a_post_from_the_servers_own_page_or_from_curl_is_answered(client, crafted):
    form = _refine_form(crafted)
    own_page = {"Origin": "http://testserver.local", "Sec-Fetch-Site": "same-origin", **HX}
    for headers in (own_page, {"Sec-Fetch-Site": "none"}, {}):  # a browser page, a typed URL, curl
        r = client.post("/refine", data=form, headers=headers)
        assert r.status_code == 200 and 'id="result-count"' in r.text, r.text
        r = client.post("/api/sql", json={"sql": "SELECT 1 AS n"}, headers=headers)
        assert r.status_code == 200 and r.json()["rows"] == [{"n": 1}]
    # GETs (no state changes) stay open to any origin's navigation
    assert (
        client.get(
            "/api/health", headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
        ).status_code
        == 200
    )


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain;charset=UTF-8", None, "application/xml"])
def test_json_is_taken_only_as_application_json(client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    for path, body in (
        ("/api/sql", b'{"sql": "SELECT 1 AS n"}'),
        ("/api/refine", b'{"positives": [1]}'),
        ("/api/search", b'{"q": "shoe"}'),
    ):
        r = client.post(path, content=body, headers=headers)
        assert r.status_code == 415 and "application/json" in r.json()["detail"], (path, r.text)
    r = client.post(
        "/api/sql", content=b'{"sql": "SELECT 1 AS n"}', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 200 and r.json()["rows"] == [{"n": 1}]


def test_every_response_carries_the_security_headers(client, crafted):
    _, ids, _ = crafted
    answers = [
        client.get("/?catalog=crafted"),
        client.get("/console?catalog=crafted"),
        client.get("/static/app.js"),
        client.get("/static/app.css"),
        client.get("/api/health"),
        client.get("/no/such/path"),
        client.get(f"/image/crafted/{ids['small']}"),
        client.get(f"/image/crafted/{ids['secret']}"),
        client.post("/api/sql", content=b"{}", headers={"Content-Type": "text/plain"}),
        client.post("/api/sql", json={}, headers={"Origin": "https://evil.example"}),
        client.get("/api/health", headers={"Host": "evil.example"}),
        client.get("/schema/openapi.json"),
    ]
    for r in answers:
        for name, value in HEADERS.items():
            assert r.headers.get(name) == value, (r.url, name)
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp


def test_pages_have_no_inline_script_or_style(client):
    """The CSP refuses inline code: every script and style of the pages comes from /static."""
    for path in ("/?catalog=crafted", "/console?catalog=crafted"):
        html = client.get(path).text
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path
        assert "<style" not in html and not re.search(r"\sstyle=", html), path
        assert not re.search(r"\son[a-z]+\s*=", html), path
        assert "javascript:" not in html


# -- both, over real HTTP ----------------------------------------------------------------------
def _raw(port: int, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_the_cli_server_refuses_rebinding_and_cross_site_posts(crafted, serve):
    path, ids, _ = crafted
    with serve(path, "--set", "allowed_hosts=photos.lan") as (_, port):

        def get(host: str) -> int:
            return _raw(
                port, f"GET /api/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )[0]

        def post(headers: str) -> tuple[int, bytes]:
            body = b'{"sql": "SELECT 42 AS n"}'
            return _raw(
                port,
                (
                    f"POST /api/sql HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
                ).encode()
                + body,
            )

        assert get("evil.example") == 400 and get(f"evil.example:{port}") == 400
        assert get(f"127.0.0.1:{port}") == get(f"localhost:{port}") == get("photos.lan") == 200
        status, body = post("Origin: https://evil.example\r\n")
        assert status == 403 and b"42" not in body
        assert post("Sec-Fetch-Site: cross-site\r\n")[0] == 403
        assert post(f"Origin: http://127.0.0.1:{port}\r\nSec-Fetch-Site: same-origin\r\n")[0] == 200
        status, body = post("")  # curl
        assert status == 200 and b"42" in body
        status, body = _raw(
            port,
            f"GET /image/crafted/{ids['passwd']} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
        assert status == 403 and b"root:" not in body


def test_the_page_works_in_a_browser_under_the_csp(web_demo_copy, serve):
    """In chromium: no Content-Security-Policy violation on the search page, the refine and the
    console; the sliders and the catalog chooser work without inline handlers; "view" opens the
    viewer, whose link shows the image in a tab; a page of another origin cannot post to the server."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists("/usr/bin/chromium"):
        pytest.skip("needs Debian's chromium")
    from pathlib import Path

    out = Path(__file__).resolve().parent.parent / "test-output"
    with serve(web_demo_copy()) as (url, port), playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu"],
        )
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.add_init_script(
            "window.__csp = []; document.addEventListener('securitypolicyviolation',"
            " (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
        )
        page = context.new_page()
        page.set_default_timeout(60_000)
        messages: list[str] = []
        page.on("console", lambda m: messages.append(m.text))
        page.goto(url + "/")
        page.fill("#q", "sneaker")
        page.press("#q", "Enter")
        page.wait_for_selector("#grid .thumb")
        page.fill("#sampled-negatives", "1000")  # fires input: app.js updates the output
        assert page.inner_text("#neg-out") == "1000"
        page.click("#all-positive")
        page.click("#refine-button")
        page.wait_for_selector(".result[data-kind=refine]")
        assert page.evaluate("getComputedStyle(document.getElementById('busy')).opacity") == "0"
        out.mkdir(exist_ok=True)
        page.screenshot(path=str(out / "security_csp_refine.png"), full_page=True)
        page.locator("#grid a.open").first.click()  # the viewer, then the file in a tab of its own
        page.wait_for_selector("#lightbox[open] #lightbox-info dl.info")
        with context.expect_page() as opened:
            page.click("#lightbox-open")
        tab = opened.value
        tab.wait_for_load_state()
        assert tab.evaluate("document.contentType") == "image/png"
        assert tab.evaluate("document.images.length === 1 && document.images[0].naturalWidth > 0")
        assert page.evaluate("window.__csp") == [] and not [m for m in messages if "Content Security" in m]
        page.goto(url + "/console")
        page.click("#run-sql")
        page.wait_for_selector("table.sql-result")
        assert page.evaluate("window.__csp") == [] and not [m for m in messages if "Content Security" in m]
        # a page of another site posts the classic text/plain form that reads as JSON: refused
        form = (
            f'<form method="post" action="{url}/api/sql" enctype="text/plain">'
            '<input name=\'{"sql": "SELECT 42 AS n", "x": "\' value=\'"}\'></form>'
        )
        context.route(
            "http://evil.example/", lambda route: route.fulfill(body=form, content_type="text/html")
        )
        evil = context.new_page()
        evil.goto("http://evil.example/")
        with evil.expect_navigation() as nav:
            evil.evaluate("document.forms[0].submit()")
        assert nav.value.status == 403
        assert "cross-origin request refused" in evil.content() and "42" not in evil.content()
        browser.close()
