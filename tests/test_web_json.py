"""The JSON twins (`/api/search`, `/api/refine`, `/api/sql`) over real HTTP, through `curl`: JSON bodies
with native types, the page's form encoding, the `result` token that `/api/sql` needs for
`last_result`, and hostile input answered with a JSON 400 naming the field.

Expected values come from `engine.Catalog` on the same catalog file, opened read-only beside the
server, with the same labels, options and seed."""

from __future__ import annotations

import base64
import json
import re
import subprocess

import pytest

pytest.importorskip("litestar")
pytest.importorskip("uvicorn")

import engine  # noqa: E402

MAX_LABELS = 40
SQL_MAX_ROWS = 5000


@pytest.fixture(scope="module")
def catalog_path(web_demo_copy):
    return web_demo_copy()


@pytest.fixture(scope="module")
def server(catalog_path, serve):
    with serve(
        catalog_path, "--set", f"max_labels={MAX_LABELS}", "--set", f"sql_max_rows={SQL_MAX_ROWS}"
    ) as (url, _):
        yield url


@pytest.fixture(scope="module")
def cat(catalog_path, server):
    """The served catalog file, opened read-only in this process (after the server has started)."""
    with engine.Catalog.open(catalog_path, read_only=True) as c:
        yield c


@pytest.fixture(scope="module")
def labels(cat):
    """Eight ankle boots as positives and two sneakers as negatives."""
    boots = (
        cat.sql("SELECT id FROM images WHERE label = 'Ankle boot' ORDER BY id LIMIT 8")
        .column("id")
        .to_pylist()
    )
    sneakers = (
        cat.sql("SELECT id FROM images WHERE label = 'Sneaker' ORDER BY id LIMIT 2").column("id").to_pylist()
    )
    assert len(boots) == 8 and len(sneakers) == 2
    return boots, sneakers


def curl(url: str, path: str, *args: str, body: bytes | None = None) -> tuple[int, dict | str, str]:
    """``curl`` ``url + path`` with ``args`` (and ``body`` on stdin, for ``--data-binary @-``); returns the
    status, the body (parsed when JSON) and the content type."""
    cmd = [
        "curl",
        "-sS",
        "--max-time",
        "120",
        "-o",
        "-",
        "-w",
        "\n%{http_code} %{content_type}",
        *args,
        url + path,
    ]
    r = subprocess.run(cmd, input=body, capture_output=True, timeout=180, check=True)
    text, _, tail = r.stdout.decode().rpartition("\n")
    status, _, content_type = tail.partition(" ")
    data = json.loads(text) if "json" in content_type else text
    return int(status), data, content_type


def post_json(url: str, path: str, payload, *args: str) -> tuple[int, dict | str]:
    status, data, _ = curl(
        url,
        path,
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        "@-",
        *args,
        body=json.dumps(payload).encode(),
    )
    return status, data


def test_json_refine_takes_arrays_and_gives_the_engines_result_and_a_token(server, cat, labels):
    pos, neg = labels
    expected = cat.refine(
        pos,
        neg,
        model="ensemble",
        sampled_negatives=500,
        negative_weight=1.0,
        random_state=0,
        guide=True,
        suggestions=60,
    )
    status, body = post_json(
        server,
        "/api/refine?limit=1000000",
        {
            "positives": pos,
            "negatives": neg,
            "model": "ensemble",
            "sampled_negatives": 500,
            "negative_weight": 1.0,
            "seed": 0,
            "suggestions": 60,
            "guide": True,
        },
    )
    assert status == 200, body
    assert body["ids"] == expected.ids.tolist() and body["scores"] == expected.scores.tolist()
    assert body["results"] == len(expected.ids) > len(pos)
    assert body["suggestions"] == expected.suggestions.tolist() and len(body["suggestions"]) == 60
    assert body["sql"] == expected.sql and body["stats"]["model"] == "ensemble"
    assert re.fullmatch(r"[A-Za-z0-9_-]{8,}", body["result"])

    # the token: last_result is the whole refine, in its order
    status, rows = post_json(
        server,
        "/api/sql",
        {"sql": "SELECT id, score, rank FROM last_result ORDER BY rank", "result": body["result"]},
    )
    assert status == 200, rows
    assert [r["id"] for r in rows["rows"]] == expected.ids.tolist() and not rows["truncated"]
    assert [r["score"] for r in rows["rows"]] == expected.scores.tolist()
    assert [r["rank"] for r in rows["rows"]] == list(range(1, len(expected.ids) + 1))
    # ... and the console macros over it
    status, rows = post_json(
        server, "/api/sql", {"sql": "SELECT id, label FROM result_images()", "result": body["result"]}
    )
    assert status == 200 and [r["id"] for r in rows["rows"]] == expected.ids.tolist()

    # other options reach the engine: no guide, another model, seed and weight
    expected = cat.refine(
        pos,
        neg,
        model="tree",
        sampled_negatives=200,
        negative_weight=3.0,
        random_state=7,
        guide=False,
        suggestions=5,
    )
    status, body = post_json(
        server,
        "/api/refine?limit=1000000",
        {
            "positives": pos,
            "negatives": neg,
            "model": "tree",
            "sampled_negatives": 200,
            "negative_weight": 3,
            "seed": 7,
            "suggestions": 5,
            "guide": False,
        },
    )
    assert status == 200, body
    assert body["ids"] == expected.ids.tolist() and body["suggestions"] == expected.suggestions.tolist()
    assert body["stats"]["guided"] is False and body["stats"]["model"] == "tree"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id FROM last_result",
        "SELECT count(*) AS n FROM last_result",
        "SELECT id FROM result_images()",
        "SELECT id FROM images WHERE in_last_result(id)",
    ],
)
def test_last_result_without_a_token_is_a_400_that_says_to_pass_it(server, sql):
    status, body, content_type = curl(
        server, "/api/sql", "-H", "Content-Type: application/json", "--data-binary", json.dumps({"sql": sql})
    )
    assert status == 400 and content_type.startswith("application/json")
    assert "result" in body["detail"] and "/api/refine" in body["detail"]
    status, body = post_json(server, "/api/sql", {"sql": sql, "result": "no-such-token"})
    assert status == 400 and "unknown or expired" in body["detail"] and "`result`" in body["detail"]


def test_queries_without_last_result_need_no_token(server):
    status, body = post_json(server, "/api/sql", {"sql": "SELECT 41 + 1 AS n"})
    assert status == 200 and body["rows"] == [{"n": 42}]
    own = "WITH last_result AS (SELECT 7 AS id) SELECT id FROM last_result"  # a CTE of that name
    status, body = post_json(server, "/api/sql", {"sql": own})
    assert status == 200 and body["rows"] == [{"id": 7}]


def test_json_text_search(server, cat):
    expected = cat.search("ankle boot", k=12)
    status, body = post_json(server, "/api/search", {"q": "ankle boot", "k": 12})
    assert status == 200, body
    assert body["ids"] == expected.ids.tolist() and body["scores"] == expected.scores.tolist()
    assert body["stats"]["query"] == "text" and body["results"] == 12
    # the GET twin agrees, and both give a token for /api/sql
    status, got, _ = curl(server, "/api/search?q=ankle%20boot&k=12")
    assert status == 200 and got["ids"] == body["ids"]
    status, rows = post_json(
        server, "/api/sql", {"sql": "SELECT id FROM last_result ORDER BY rank", "result": body["result"]}
    )
    assert status == 200 and [r["id"] for r in rows["rows"]] == expected.ids.tolist()


def test_json_image_search_by_base64_and_multipart(server, cat, labels):
    image_id = labels[0][0]
    uri = cat.sql("SELECT uri FROM images WHERE id = $1", [image_id]).column("uri")[0].as_py()
    with open(uri, "rb") as f:
        png = f.read()
    assert png[:4] == b"\x89PNG"
    expected = cat.search(image=png, k=10)
    status, body = post_json(server, "/api/search", {"image_base64": base64.b64encode(png).decode(), "k": 10})
    assert status == 200, body
    assert body["ids"] == expected.ids.tolist() and body["stats"]["query"] == "image"
    assert image_id in body["ids"][:3]
    # a data: URL with line breaks, and a multipart upload, give the same
    data_url = "data:image/png;base64," + base64.encodebytes(png).decode()
    status, again = post_json(server, "/api/search", {"image_base64": data_url, "k": 10})
    assert status == 200 and again["ids"] == body["ids"]
    status, upload, _ = curl(server, "/api/search", "-F", f"file=@{uri};type=image/png", "-F", "k=10")
    assert status == 200 and upload["ids"] == body["ids"]
    # by id
    status, similar = post_json(server, "/api/search", {"id": image_id, "k": 5})
    assert status == 200 and similar["ids"] == cat.search(id=image_id, k=5).ids.tolist()


@pytest.mark.parametrize(
    "path, payload, message",
    [
        ("/api/refine", {"positives": [1, True]}, "positives must be a list of integer image ids"),
        ("/api/refine", {"positives": 5}, "positives must be a list of integer image ids"),
        ("/api/refine", {"positives": [1.5]}, "positives must be a list of integer image ids"),
        ("/api/refine", {"positives": [2**64]}, "positives must be a list of integer image ids"),
        ("/api/refine", {"negatives": [1]}, "positives is required"),
        (
            "/api/refine",
            {"positives": [1], "sampled_negatives": True},
            "sampled_negatives must be an integer in 0..2000",
        ),
        (
            "/api/refine",
            {"positives": [1], "sampled_negatives": "500"},
            "sampled_negatives must be an integer",
        ),
        ("/api/refine", {"positives": [1], "sampled_negatives": 5000}, "0..2000"),
        (
            "/api/refine",
            {"positives": [1], "negative_weight": "heavy"},
            "negative_weight must be a number in 1..100",
        ),
        ("/api/refine", {"positives": [1], "seed": -1}, "seed must be an integer in 0..4294967295"),
        ("/api/refine", {"positives": [1], "seed": False}, "seed must be an integer"),
        ("/api/refine", {"positives": [1], "guide": "yes"}, "guide must be true or false"),
        ("/api/refine", {"positives": [1], "suggestions": 5000}, "suggestions must be an integer in 0..1000"),
        ("/api/refine", {"positives": [1], "model": "svm"}, "unknown model 'svm'"),
        ("/api/refine", {"positives": [1], "positive": [2]}, "unknown field 'positive'"),
        ("/api/refine", {"positives": list(range(MAX_LABELS + 1))}, f"at most {MAX_LABELS} labels"),
        ("/api/refine", [1, 2], "must be one JSON object"),
        ("/api/search", {"q": "bag", "k": 0}, "k must be an integer in 1..1000"),
        ("/api/search", {"q": "bag", "k": True}, "k must be an integer"),
        ("/api/search", {"q": ["bag"]}, "q must be a text query"),
        ("/api/search", {"id": "3"}, "id must be an integer image id"),
        ("/api/search", {"image_base64": 12}, "image_base64 must be an image file"),
        ("/api/search", {"image_base64": "not base64!"}, "image_base64 must be an image file in base64"),
        ("/api/search", {"image_base64": base64.b64encode(b"not an image").decode()}, "cannot be used"),
        ("/api/search", {"q": "bag", "id": 3}, "exactly one of q"),
        ("/api/search", {}, "exactly one of q"),
        ("/api/sql", {"sql": 5}, "sql must be one read-only SELECT"),
        ("/api/sql", {"sql": "SELECT 1", "result": 5}, "result must be a result token"),
        ("/api/sql", {"sql": "SELECT 1", "catalog": ["x"]}, "catalog must be a catalog's name"),
        ("/api/sql", {}, "sql is required"),
    ],
)
def test_bad_json_is_a_400_naming_the_field(server, path, payload, message):
    status, body = post_json(server, path, payload)
    assert status == 400, body
    assert message in body["detail"], body["detail"]
    assert "data" not in body["detail"].split() and "random_state" not in body["detail"]


def test_bodies_that_are_not_json_objects_are_400s(server):
    for raw in (b"", b"{", b"null", b"\xff\xfe"):
        status, body, _ = curl(
            server, "/api/refine", "-H", "Content-Type: application/json", "--data-binary", "@-", body=raw
        )
        assert status == 400 and "JSON" in body["detail"], (raw, body)
    # JSON sent as a form (curl -d without a Content-Type) is told what to do
    status, body, _ = curl(server, "/api/refine", "-d", '{"positives": [1]}')
    assert status == 400 and "Content-Type: application/json" in body["detail"]
    # a body past the limit is refused before it is read
    status, body = post_json(server, "/api/refine", {"positives": "1," * 600_000})
    assert status == 413


def test_form_encoding_still_works(server, cat, labels):
    pos, neg = labels
    expected = cat.refine(
        pos, neg, model="forest", sampled_negatives=300, negative_weight=2.0, random_state=0, suggestions=60
    )
    form = [
        "-d",
        f"positives={','.join(map(str, pos))}",
        "-d",
        f"negatives={','.join(map(str, neg))}",
        "-d",
        "model=forest",
        "-d",
        "sampled_negatives=300",
        "-d",
        "negative_weight=2",
    ]
    status, body, _ = curl(server, "/api/refine?limit=1000000", *form)
    assert status == 200, body
    assert body["ids"] == expected.ids.tolist() and body["suggestions"] == expected.suggestions.tolist()
    # a field given once per id is a list, as in JSON
    repeated = [a for i in pos for a in ("-d", f"positives={i}")] + [
        a for i in neg for a in ("-d", f"negatives={i}")
    ]
    repeated += ["-d", "model=forest", "-d", "sampled_negatives=300", "-d", "negative_weight=2"]
    status, again, _ = curl(server, "/api/refine?limit=1000000", *repeated)
    assert status == 200 and again["ids"] == body["ids"]
    status, rows, _ = curl(
        server,
        "/api/sql",
        "-d",
        "sql=SELECT id FROM last_result ORDER BY rank",
        "-d",
        f"result={body['result']}",
    )
    assert status == 200 and [r["id"] for r in rows["rows"]] == expected.ids.tolist()
    status, bad, _ = curl(server, "/api/refine", "-d", "positives=1", "-d", "sampled_negatives=lots")
    assert status == 400 and "sampled_negatives must be an integer in 0..2000" in bad["detail"]

    # the page: its fine-tune fragment carries a token the console and /api/sql accept
    status, html, content_type = curl(server, "/refine", "-H", "HX-Request: true", *form)
    assert status == 200 and content_type.startswith("text/html")
    token = re.search(r'data-token="([^"]+)"', html).group(1)
    status, rows = post_json(
        server, "/api/sql", {"sql": "SELECT id FROM last_result ORDER BY rank", "result": token}
    )
    assert status == 200 and [r["id"] for r in rows["rows"]] == expected.ids.tolist()
    count = "sql=SELECT count(*) AS n FROM last_result"
    status, table, _ = curl(
        server, "/console", "-H", "HX-Request: true", "-d", count, "-d", f"result={token}"
    )
    assert status == 200 and f"<td>{len(expected.ids)}</td>" in table
    # the console page before any search: last_result is empty there, as it always was
    status, table, _ = curl(server, "/console", "-H", "HX-Request: true", "-d", count, "-d", "result=")
    assert status == 200 and "<td>0</td>" in table


def test_openapi_documents_the_json_bodies_and_answers(server):
    status, schema, _ = curl(server, "/schema/openapi.json")
    assert status == 200
    paths, components = schema["paths"], schema["components"]["schemas"]

    def body(path: str, media: str) -> dict:
        return paths[path]["post"]["requestBody"]["content"][media]["schema"]

    def answer(path: str, method: str = "post") -> dict:
        return paths[path][method]["responses"]["200"]["content"]["application/json"]["schema"]

    assert body("/api/refine", "application/json") == {"$ref": "#/components/schemas/RefineRequest"}
    assert body("/api/refine", "application/x-www-form-urlencoded") == body("/api/refine", "application/json")
    assert body("/api/sql", "application/json") == {"$ref": "#/components/schemas/SqlRequest"}
    assert body("/api/sql", "application/x-www-form-urlencoded") == body("/api/sql", "application/json")
    assert body("/api/search", "application/json") == {"$ref": "#/components/schemas/SearchRequest"}
    assert body("/api/search", "multipart/form-data")["properties"]["file"]["format"] == "binary"
    for path, method in (("/api/refine", "post"), ("/api/search", "post"), ("/api/search", "get")):
        assert answer(path, method) == {"$ref": "#/components/schemas/ResultResponse"}
    assert answer("/api/sql") == {"$ref": "#/components/schemas/SqlResponse"}
    refine = components["RefineRequest"]
    assert refine["required"] == ["positives"] and refine["additionalProperties"] is False
    assert {
        "positives",
        "negatives",
        "model",
        "sampled_negatives",
        "negative_weight",
        "seed",
        "suggestions",
        "guide",
        "catalog",
    } == set(refine["properties"])
    assert sorted(refine["properties"]["model"]["enum"]) == sorted(engine.learn.refine.MODELS)
    assert refine["properties"]["sampled_negatives"]["maximum"] == 2000
    ids = {"type": "array", "items": {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}}
    assert ids in refine["properties"]["positives"]["anyOf"]
    suggestions = refine["properties"]["suggestions"]["anyOf"][0]
    assert {"type": "integer", "minimum": 0, "maximum": 1000}.items() <= suggestions.items()
    assert set(components["SearchRequest"]["properties"]) == {"q", "image_base64", "id", "k", "catalog"}
    assert "last_result" in components["SqlRequest"]["properties"]["result"]["description"]
    result = components["ResultResponse"]
    assert {"ids", "scores", "sql", "stats", "results", "suggestions", "result"} <= set(result["required"])
    assert "/api/sql" in result["properties"]["result"]["description"]
    assert set(components["SqlResponse"]["properties"]) == {"columns", "rows", "truncated", "cut", "time_ms"}
