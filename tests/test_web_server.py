"""`clip-branches serve` in its own process, attacked over real HTTP: a client that goes away
mid-query, requests for other hosts, and cross-site requests."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("litestar")
pytest.importorskip("uvicorn")

ENDLESS = "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t"


@pytest.fixture(scope="module")
def server(web_demo_copy, serve):
    with serve(web_demo_copy(), "--set", "sql_time_limit_s=120", "--set", "sql_workers=1") as (url, port):
        yield url, port


def _request(url: str, path: str, body: dict | None = None, headers: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url + path,
        data=data,
        headers={**({"Content-Type": "application/json"} if body is not None else {}), **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _console_running(url: str) -> int:
    status, body, _ = _request(url, "/api/health")
    assert status == 200
    return json.loads(body)["catalogs"]["fashion"]["console_queries"]


def test_a_console_query_stops_when_its_client_goes_away(server):
    url, port = server
    body = json.dumps({"sql": ENDLESS}).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /api/sql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    deadline = time.time() + 60
    while _console_running(url) == 0:  # the query has reached its worker
        assert time.time() < deadline, "the query never started"
        time.sleep(0.1)
    status, answer, _ = _request(url, "/api/sql", {"sql": "SELECT 1 AS n"})
    assert status == 503 and b"busy" in answer  # the one worker is taken
    sock.close()
    while _console_running(url):  # well before the 120 s time limit
        assert time.time() < deadline, "the query ran on after its client had gone"
        time.sleep(0.1)
    status, answer, _ = _request(url, "/api/sql", {"sql": "SELECT 1 AS n"})
    assert status == 200 and json.loads(answer)["rows"] == [{"n": 1}]
