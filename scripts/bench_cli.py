"""Wall time of a one-shot ``clip-branches search`` beside the same search on a running server.

Each CLI run is a fresh process (``clip-branches search CATALOG QUERY``), so it pays for Python's
start, the imports, opening the catalog, loading the index and the text encoder, and the search;
the target is 2 s or less (median). In the same run the script starts ``clip-branches serve`` on
the catalog and times ``GET /api/search?q=QUERY`` over HTTP against the warm server: what a user
of the UI waits for. Also reported: the import time of ``engine.cli`` alone, and whether the CLI
process imported torch or transformers. Prints JSON.

    python scripts/bench_cli.py [--catalog demo/fashion.duckdb] [--runs 5] [--query "ankle boot"]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_web import _free_port, start_server  # noqa: E402

CLI = [sys.executable, "-m", "engine"]
PROBE = (
    "import sys; sys.argv = ['clip-branches'] + sys.argv[1:]; "
    "from engine.cli import main; rc = main(); "
    "print('#modules', int('torch' in sys.modules), int('transformers' in sys.modules), file=sys.stderr); "
    "raise SystemExit(rc)"
)


def time_cli(catalog: str, query: str, runs: int) -> dict:
    walls, ids = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = subprocess.run(
            [*CLI, "search", catalog, query, "-k", "60"], capture_output=True, text=True, check=True
        )
        walls.append(time.perf_counter() - t0)
        got = [
            int(line.split("\t")[0]) for line in out.stdout.splitlines() if line and not line.startswith("id")
        ]
        if ids is not None and got != ids:
            raise SystemExit("two CLI runs of the same search returned different ids")
        ids = got
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, "search", catalog, query], capture_output=True, text=True, check=True
    )
    flags = next(line.split()[1:] for line in probe.stderr.splitlines() if line.startswith("#modules"))
    imp = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import engine.cli"], check=True)
        imp.append(time.perf_counter() - t0)
    return {
        "wall_s_median": statistics.median(walls),
        "wall_s": walls,
        "results": len(ids or []),
        "import_engine_cli_s_median": statistics.median(imp),
        "imports_torch": flags[0] == "1",
        "imports_transformers": flags[1] == "1",
        "ids": ids,
    }


def time_server(catalog: str, query: str, runs: int) -> dict:
    port = _free_port()
    proc = start_server(catalog, port, timeout_s=600)
    try:
        url = f"http://127.0.0.1:{port}/api/search?" + urllib.parse.urlencode({"q": query, "k": 60})
        with urllib.request.urlopen(url, timeout=60) as r:  # the first query loads the text encoder
            json.load(r)
        walls, body = [], None
        for _ in range(runs):
            t0 = time.perf_counter()
            with urllib.request.urlopen(url, timeout=60) as r:
                body = json.load(r)
            walls.append(time.perf_counter() - t0)
        return {
            "wall_s_median": statistics.median(walls),
            "wall_s": walls,
            "ids": [int(i) for i in body["ids"]],
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--catalog", default="demo/fashion.duckdb")
    ap.add_argument("--query", default="ankle boot")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-server", action="store_true", help="time the CLI only")
    args = ap.parse_args(argv)
    if not Path(args.catalog).exists():
        raise SystemExit(
            f"{args.catalog} not found; build it with `clip-branches demo {args.catalog} --no-serve`"
        )
    cli = time_cli(args.catalog, args.query, args.runs)
    out = {"catalog": args.catalog, "query": args.query, "runs": args.runs, "cli": cli}
    if not args.no_server:
        server = time_server(args.catalog, args.query, args.runs)
        out["server"] = server
        out["same_ids"] = server.pop("ids") == cli["ids"]
        out["cli_over_server"] = cli["wall_s_median"] / server["wall_s_median"]
    cli.pop("ids")
    out["target"] = {"cli_wall_s_median_max": 2.0, "met": cli["wall_s_median"] <= 2.0}
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
