"""Ingest into a served catalog: search and refine latency while images arrive, and how soon
the new images are searchable.

The script copies ``--catalog`` (with its side folder) into a temporary folder, serves the copy
with ``clip-branches serve`` on 127.0.0.1, and runs ``--clients`` client threads over real HTTP.
Each client alternates a text search (``GET /api/search?q=...&k=60``, a query from a fixed list)
and a fine-tune (``POST /api/refine`` with 8 results of the last search as positives and 2 as
negatives). Two phases, measured in the same run:

1. *idle*: ``--idle-s`` seconds of that load and nothing else;
2. *ingest*: the same load while ``clip-branches ingest COPY NEW_FOLDER`` takes in ``--images``
   new files (demo images mirrored left to right: new bytes, the same garments). The command
   stages the files (decode, embed) in its own process and hands them to the server, which takes
   them in (the writer holds requests back meanwhile: ``write_ms`` of ``/api/health``) and
   reports; the command exits once the server has.

Then, from the moment the command exits, new images are looked up by id
(``/api/search?id=...&k=1``, which must return it), for 20 of them spread over the batch:
``searchable_after_s`` is the time until the last of those is found (the target is 5 s); the
server's SQL console must then see codes for every new id. Reported per phase and request kind: count, errors,
p50 and p99 in ms; the ingest's wall time, the server's last write pause, rows before and after.
Prints JSON.

    python scripts/bench_live.py --catalog demo/fashion.duckdb --images 1000 [--clients 2] [--idle-s 30]
    python scripts/bench_live.py --catalog demo/fashion.duckdb --quick      # 200 images, 10 s idle
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import duckdb
import numpy as np
from PIL import Image, ImageOps

QUERIES = ("sneaker", "ankle boot", "dress", "bag", "shirt", "trousers", "pullover", "sandal", "coat")


def http(url: str, body: dict | None = None, timeout: float = 60.0) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class Load:
    """Client threads timing searches and refines until stopped; samples by phase and kind."""

    def __init__(self, url: str, clients: int):
        self.url, self.clients = url, clients
        self.phase = "idle"
        self.samples: dict[tuple[str, str], list[float]] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(clients)]

    def _record(self, kind: str, ms: float | None) -> None:
        key = (self.phase, kind)
        with self._lock:
            if ms is None:
                self.errors[key] = self.errors.get(key, 0) + 1
            else:
                self.samples.setdefault(key, []).append(ms)

    def _client(self, k: int) -> None:
        rng = np.random.default_rng(k)
        while not self._stop.is_set():
            q = QUERIES[int(rng.integers(len(QUERIES)))]
            t0 = time.perf_counter()
            try:
                found = http(f"{self.url}/api/search?q={urllib.request.quote(q)}&k=60")["ids"]
                self._record("search", (time.perf_counter() - t0) * 1e3)
            except (OSError, ValueError):
                self._record("search", None)
                continue
            if len(found) < 12:
                continue
            t0 = time.perf_counter()
            try:
                http(f"{self.url}/api/refine", {"positives": found[:8], "negatives": found[-2:]})
                self._record("refine", (time.perf_counter() - t0) * 1e3)
            except (OSError, ValueError):
                self._record("refine", None)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(timeout=120)

    def report(self) -> dict:
        out: dict = {}
        for phase in ("idle", "ingest"):
            for kind in ("search", "refine"):
                ms = np.array(self.samples.get((phase, kind), []))
                out.setdefault(phase, {})[kind] = {
                    "n": int(len(ms)),
                    "errors": self.errors.get((phase, kind), 0),
                    "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
                    "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
                }
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_images(catalog: Path, folder: Path, n: int) -> list[Path]:
    con = duckdb.connect(str(catalog), read_only=True)
    uris = [
        r[0]
        for r in con.execute(
            "SELECT uri FROM images WHERE uri IS NOT NULL ORDER BY id LIMIT ?", [n]
        ).fetchall()
    ]
    con.close()
    folder.mkdir(parents=True)
    out = []
    for k, uri in enumerate(uris):
        dst = folder / f"arrival-{k:06d}.png"
        ImageOps.mirror(Image.open(uri)).save(dst)
        out.append(dst)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--catalog", type=Path, default=Path("demo/fashion.duckdb"))
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--idle-s", type=float, default=30.0)
    p.add_argument("--quick", action="store_true", help="200 images, 10 s idle")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.idle_s = 200, 10.0
    if not args.catalog.exists():
        sys.exit(
            f"no catalog at {args.catalog}; build the demo with `clip-branches demo {args.catalog} --no-serve`"
        )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    root = Path(tempfile.mkdtemp(prefix="bench-live-"))
    server = None
    try:
        copy = root / args.catalog.name
        shutil.copy(args.catalog, copy)
        shutil.copytree(f"{args.catalog}.d", f"{copy}.d", symlinks=True)
        files = new_images(copy, root / "arrivals", args.images)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", str(copy), "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 600
        while True:
            try:
                health = next(iter(http(f"{url}/api/health", timeout=5)["catalogs"].values()))
                break
            except (OSError, ValueError):
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit("the server did not start")
                time.sleep(0.5)
        rows_before = health["rows"]
        load = Load(url, args.clients)
        load.start()
        time.sleep(args.idle_s)
        load.phase = "ingest"
        t0 = time.perf_counter()
        ingest = subprocess.run(
            [
                sys.executable,
                "-m",
                "engine",
                "ingest",
                str(copy),
                str(root / "arrivals"),
                "--json",
                "--quiet",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        t_end = time.perf_counter()
        load.phase = "after"
        if ingest.returncode != 0:
            sys.exit(f"ingest failed: {ingest.stderr}")
        report = json.loads(ingest.stdout)
        # Which ids the new files got, read beside the server (the file is shared read-only).
        con = duckdb.connect(str(copy), read_only=True)
        ids = [
            r[0]
            for r in con.execute(
                "SELECT id FROM images WHERE uri IN (SELECT unnest(?))", [[str(f) for f in files]]
            ).fetchall()
        ]
        con.close()
        # Searchable: 20 new ids spread over the batch, each found by id, and the server's own
        # SQL console sees codes for all of them.
        sample = [ids[k] for k in np.linspace(0, len(ids) - 1, min(20, len(ids))).astype(int)] if ids else []
        waiting = set(sample)
        while waiting and time.perf_counter() - t_end < 120:
            for i in list(waiting):
                try:
                    if http(f"{url}/api/search?id={i}&k=1")["ids"][:1] == [i]:
                        waiting.discard(i)
                except (OSError, ValueError):
                    pass
        searchable_after = time.perf_counter() - t_end
        coded = http(
            f"{url}/api/sql",
            {"sql": f"SELECT count(*) AS n FROM codes WHERE id BETWEEN {min(ids)} AND {max(ids)}"},
        )["rows"][0]["n"]
        if coded != len(ids):
            waiting.add(-1)
        load.stop()
        health = next(iter(http(f"{url}/api/health")["catalogs"].values()))
        out = {
            "catalog": str(args.catalog),
            "images": args.images,
            "clients": args.clients,
            "rows_before": rows_before,
            "rows_after": health["rows"],
            "added": report["added"],
            "coded": report.get("coded"),
            "ingest_wall_s": round(t_end - t0, 2),
            "server_write_ms": health["write_ms"],
            "searchable_after_s": round(searchable_after, 3) if not waiting else None,
            "not_searchable": len(waiting),
            "new_rows_with_codes_seen_by_the_server": coded,
            "latency": load.report(),
        }
        idle, during = out["latency"]["idle"], out["latency"]["ingest"]
        out["ratio_ingest_to_idle_p50"] = {
            k: round(during[k]["p50_ms"] / idle[k]["p50_ms"], 2)
            for k in ("search", "refine")
            if during[k]["p50_ms"] and idle[k]["p50_ms"]
        }
        print(json.dumps(out, indent=2))
        return 0 if not waiting and out["added"] == args.images else 1
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
