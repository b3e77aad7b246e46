"""Fuzz every HTTP endpoint of the web app with schemathesis, against the app's own OpenAPI schema.

The app runs in this process (``web.create_app([CATALOG])``: the catalog opened read-only and
sandboxed, kernels warmed up) and schemathesis reaches it through its ASGI transport, so no port
or server process is involved. A Litestar ``after_exception`` hook added to the app instance
records the exceptions handlers raise; when a response is a 5xx, the report names the exception's
type, message and deepest frame in this repository.

For every operation of ``/schema/openapi.json``, Hypothesis draws ``--max-examples`` cases in
three modes (Hypothesis picks one per case; the report gives each operation's counts):

- ``positive``: cases valid under the schema;
- ``negative``: cases that break it (wrong types, out-of-range numbers, missing fields);
- ``hinted``: positive cases whose fields mostly hold real values: the catalog's name, image ids
  and comma-separated id lists that exist, the models, a live result token, an image file (whole
  and cut short), numbers inside the ranges the handlers accept, and SQL that runs, over the
  catalog and returning each awkward kind of value. Now and then a field gets an edge value
  instead: an integer at or just past the int32, uint32 or int64 limits, for integers the schema
  leaves unbounded and for the id lists. A hinted case also comes, at random, from an API client,
  HTMX or a browser (HTMX and browsers get errors as an HTML fragment, API clients as JSON).
  Random values alone almost never get past the first 404 or 400, so without hints the engine
  behind them would go untested.

Each response goes through schemathesis' ``not_a_server_error`` check, which gates the run: any 5xx,
or a request the app did not answer (an exception escaping it, a time-out), makes the exit code 1.
The checks named in ``--checks`` run too; their failures are counted as ``other_failures`` and
grouped by check and first line of message, without failing the run. By default that is
``response_schema_conformance``: JSON bodies must match the schema documented for their status
(the HTML fragments are documented as plain strings, and statuses the schema does not list are
skipped, so the HTML endpoints add no noise of their own). ``status_code_conformance`` and
``content_type_conformance`` can be added; the schema lists only 200 and 400 and documents
thumbnails as JSON, so they fail on every 404 and every thumbnail.

Hypothesis does not shrink here: a failure is recorded, not raised, so generation goes on. The 5xx
answers are grouped by operation, status, exception type and frame; of each group the report
keeps the count and the first failing request, made smaller by dropping its query parameters,
headers and body fields one at a time while the same failure recurs (:func:`minimize`; those
extra requests are not counted as cases), as a curl command. Prints one JSON document.

    python scripts/fuzz_http.py [--catalog demo/fashion.duckdb] [--max-examples 800] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import traceback
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hypothesis
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from litestar import Litestar
from litestar.exceptions import HTTPException
from schemathesis import GenerationMode
from schemathesis.errors import FailureGroup

from engine.errors import CatalogError
from engine.learn.refine import MODELS
from web import Settings, create_app

ROOT = Path(__file__).resolve().parent.parent

SCHEMA_PATH = "/schema/openapi.json"
DEFAULT_CHECKS = ("response_schema_conformance",)
REQUEST_TIMEOUT_S = 120
CURL_CHARS = 2000
# Integers at and just past the limits of the fixed widths a number may be stored in (int32,
# uint32 random seeds, int64 image ids): where an unbounded integer of the schema meets code.
INT_EDGES = (-(2**63) - 1, -(2**63), -(2**31) - 1, -1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63)
# Form fields holding comma-separated image ids.
ID_LISTS = ("positives", "negatives")
MISSING = object()
# One value of each awkward kind of SQL result: wide and unsigned integers, decimals, NaN and
# infinities, intervals, times, dates outside Python's range, binary, nested and union types.
SQL_VALUES = (
    "170141183460469231731687303715884105727::HUGEINT",
    "18446744073709551615::UBIGINT",
    "1.5::DECIMAL(10, 2)",
    "'nan'::DOUBLE",
    "'-inf'::DOUBLE",
    "INTERVAL 1 DAY",
    "TIME '12:00'",
    "TIMESTAMPTZ '2020-01-01 00:00:00+00'",
    "DATE 'infinity'",
    "TIMESTAMP '-infinity'",
    "DATE '0044-03-15 (BC)'",
    "'ab'::BLOB",
    "'101'::BITSTRING",
    "uuid()",
    "MAP {'a': 1}",
    "{'a': [1, NULL]}",
    "union_value(k := 1)",
    "NULL",
    "'<b>x</b>'",
    "-1",
)
# Headers of a hinted case: none (an API client), or those of HTMX or a browser, which get errors
# as an HTML fragment instead of JSON.
CLIENT_HEADERS = ({}, {"HX-Request": "true"}, {"Accept": "text/html"})


class ExceptionLog:
    """Exceptions the app's handlers raised, in order; an ``after_exception`` hook of Litestar.

    Expected ones are ignored: the engine's ``CatalogError`` and Litestar's ``HTTPException`` below
    500 (validation errors among them), which the app answers with a 4xx."""

    def __init__(self) -> None:
        self.items: list[BaseException] = []

    async def __call__(self, exc: BaseException, scope: Any) -> None:
        if not (isinstance(exc, CatalogError) or (isinstance(exc, HTTPException) and exc.status_code < 500)):
            self.items.append(exc)

    def take(self) -> list[BaseException]:
        items, self.items = self.items, []
        return items


def describe(exc: BaseException) -> dict[str, str]:
    """Type, message (at most 300 characters) and deepest frame in this repository (outside the
    venv) of ``exc``, or its deepest frame at all."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if f.filename.startswith(str(ROOT)) and "/.venv/" not in f.filename]
    frame = (own or frames or [None])[-1]
    where = ""
    if frame is not None:
        name = Path(frame.filename)
        name = name.relative_to(ROOT) if name.is_relative_to(ROOT) else name
        where = f"{name}:{frame.lineno} in {frame.name}"
    return {"exception": type(exc).__name__, "at": where, "message": str(exc)[:300]}


def collect_hints(schema: Any, catalog: str) -> dict[str, list]:
    """Real values for the fields that name something in the catalog, read through the API
    (``POST /api/sql``): the lowest three and the highest image id, one image file (whole and cut
    in half), the models, the catalog's name, numbers the handlers accept, and queries that run:
    over the catalog, and one per value in ``SQL_VALUES``, named ``v`` and ``id`` (the console
    links id columns to images). ``token`` and ``result`` come from :func:`fresh_token`."""
    sql = schema["/api/sql"]["POST"]
    query = (
        "(SELECT id, uri FROM images ORDER BY id LIMIT 3) UNION ALL "
        "(SELECT id, uri FROM images ORDER BY id DESC LIMIT 1)"
    )
    r = sql.Case(body={"sql": query}, media_type="application/json").call(timeout=REQUEST_TIMEOUT_S)
    if r.status_code != 200:
        raise SystemExit(f"cannot read image ids through /api/sql: {r.status_code} {r.text[:300]}")
    rows = r.json()["rows"]
    ids = [row["id"] for row in rows]
    if not ids:
        raise SystemExit("the catalog holds no images")
    files = [Path(row["uri"]) for row in rows if row["uri"]]
    image = next((f.read_bytes() for f in files if f.is_file()), None)
    return {
        "catalog": [catalog],
        "id": ids,
        "image_id": ids,
        "positives": [str(ids[0]), ",".join(map(str, ids[:3])), f" {ids[-1]} , {ids[1 % len(ids)]}"],
        "negatives": ["", str(ids[-1])],
        "model": list(MODELS),
        "q": ["sneaker", "a bag to carry things"],
        "sql": [
            "SELECT * FROM last_result LIMIT 5",
            "SELECT id, uri FROM images ORDER BY id LIMIT 3",
            "SELECT count(*) AS n FROM codes",
            *(f"SELECT {v} AS {name}" for v in SQL_VALUES for name in ("v", "id")),
        ],
        "file": [image, image[: len(image) // 2]] if image else [],
        "k": [1, 60, 1000],
        "sampled_negatives": [0, 50, 2000],
        "negative_weight": [1, 2.5, 100],
        "offset": [0, 60],
        "limit": [0, 5, 1_000_000],
    }


def fresh_token(schema: Any, image_id: int) -> str:
    """A result token the app holds now: from a "more like this" search, which needs no text
    encoder. Taken again before each operation, since fuzzing evicts results from the app's LRU."""
    r = (
        schema["/similar"]["GET"]
        .Case(query={"id": image_id}, headers={"HX-Request": "true"})
        .call(timeout=REQUEST_TIMEOUT_S)
    )
    m = re.search(r'data-token="([^"]+)"', r.text)
    if r.status_code != 200 or m is None:
        raise SystemExit(f"cannot get a result token from /similar: {r.status_code} {r.text[:300]}")
    return m.group(1)


def _unbounded_integer(schema: dict) -> bool:
    """Whether ``schema`` (or one of its ``oneOf``/``anyOf`` branches) is an integer without both
    a minimum and a maximum."""
    branches = [schema, *schema.get("oneOf", []), *schema.get("anyOf", [])]
    return any(b.get("type") == "integer" and not ("minimum" in b and "maximum" in b) for b in branches)


def _fields(op: Any) -> dict[str, dict[str, dict]]:
    """The schemas of ``op``'s fields by location (``query``, ``path_parameters``, or the body's
    media type) and name."""
    fields = {
        "query": {p.name: p.definition.get("schema", {}) for p in op.query},
        "path_parameters": {p.name: p.definition.get("schema", {}) for p in op.path_parameters},
    }
    for body in op.body:
        fields[body.media_type] = dict((body.resolved_schema or {}).get("properties", {}))
    return fields


def _hint_choices(name: str, schema: dict, hints: dict[str, list]) -> tuple[list, list]:
    """``(real values, edge values)`` a hinted case may put in field ``name``."""
    edges: list = []
    if _unbounded_integer(schema):
        edges = list(INT_EDGES)
    elif name in ID_LISTS:
        edges = [str(e) for e in INT_EDGES]
    return list(hints.get(name, [])), edges


def strategy(op: Any, hints: dict[str, list]) -> st.SearchStrategy:
    """``(mode, case)`` pairs for ``op``: positive, negative and hinted cases.

    A hinted case is a positive one in which each field with hints gets a real value with
    probability 5/8 and an edge value with probability 1/4, where it has them, and otherwise keeps
    its generated value. Each field is then right with a high probability, so a fair share of the
    cases gets past validation into the engine."""
    fields = _fields(op)
    positive = op.as_strategy(GenerationMode.POSITIVE)

    def pick(draw: st.DrawFn, name: str, schema: dict, current: Any) -> Any:
        real, edges = _hint_choices(name, schema, hints)
        roll = draw(st.integers(0, 7))
        if roll == 0 or not (real or edges):
            return current
        pool = edges if (roll <= 2 and edges) or not real else real
        return draw(st.sampled_from(pool))

    @st.composite
    def hinted(draw: st.DrawFn) -> Any:
        case = draw(positive)
        client_headers = draw(st.sampled_from(CLIENT_HEADERS))
        if client_headers:
            case.headers = {**(case.headers or {}), **client_headers}
        for attr in ("query", "path_parameters"):
            values = dict(getattr(case, attr) or {})
            for name, schema in fields[attr].items():
                value = pick(draw, name, schema, values.get(name, MISSING))
                if value is not MISSING:
                    values[name] = value
            if values:
                setattr(case, attr, values)
        if isinstance(case.body, dict):
            body = dict(case.body)
            for name, schema in fields.get(case.media_type, {}).items():
                value = pick(draw, name, schema, body.get(name, MISSING))
                if value is not MISSING:
                    body[name] = value
            case.body = body
        return case

    return st.one_of(
        positive.map(lambda c: ("positive", c)),
        op.as_strategy(GenerationMode.NEGATIVE).map(lambda c: ("negative", c)),
        hinted().map(lambda c: ("hinted", c)),
    )


def _failures(case: Any, response: Any, checks: list) -> list[tuple[str, Any]]:
    """``(check name, failure)`` for each failure of ``response`` under ``checks``, each run on its own."""
    found = []
    for check in checks:
        try:
            case.validate_response(response, checks=[check])
        except FailureGroup as group:
            found += [(check.__name__, failure) for failure in group.exceptions]
    return found


def _curl(case: Any) -> str:
    try:
        text = case.as_curl_command()
    except Exception as e:  # a case that cannot be rendered still counts
        text = f"<no curl command: {type(e).__name__}: {e}>"
    return text if len(text) <= CURL_CHARS else text[:CURL_CHARS] + f"... ({len(text)} characters)"


def _replace(case: Any, attr: str, value: Any) -> Any:
    """A copy of ``case`` with ``attr`` (``query``, ``headers`` or ``body``) set to ``value``."""
    parts = {
        "path_parameters": case.path_parameters,
        "headers": case.headers,
        "cookies": case.cookies,
        "query": case.query,
        "body": case.body,
        "media_type": case.media_type,
    }
    return case.operation.Case(**{**parts, attr: value})


def minimize(case: Any, still_fails: Any) -> Any:
    """A smaller case that fails the same way: the query parameters, headers and body properties of
    ``case`` dropped one at a time, each drop kept when ``still_fails(smaller case)``."""
    for attr in ("query", "headers", "body"):
        values = getattr(case, attr)
        if not isinstance(values, Mapping):
            continue
        for name in list(values):
            trial = _replace(case, attr, {k: v for k, v in dict(getattr(case, attr)).items() if k != name})
            if still_fails(trial):
                case = trial
    return case


def fuzz_operation(
    op: Any,
    hints: dict[str, list],
    log: ExceptionLog,
    *,
    max_examples: int,
    seed: int,
    checks: list,
    other: dict[tuple, dict],
) -> tuple[dict, list[dict]]:
    """Run ``max_examples`` Hypothesis examples against ``op``. Returns the operation's counts and
    its groups of server failures (5xx answers and unanswered requests); failures of ``checks``
    are added to the groups in ``other``."""
    gate = schemathesis.checks.not_a_server_error
    counts: dict[str, Any] = {
        "cases": 0,
        "modes": Counter(),
        "status": Counter(),
        "server_errors": 0,
        "unanswered": 0,
        "other_failures": Counter(),
    }
    groups: dict[tuple, dict] = {}
    first_cases: dict[tuple, Any] = {}

    def send(case: Any) -> tuple[Any, tuple | None, dict]:
        """``(response, key, info)`` of ``case``: the response (None when the app did not answer)
        and, for a server failure, its group key and description (else None and {})."""
        log.take()
        try:
            response = case.call(timeout=REQUEST_TIMEOUT_S)
        except Exception as e:
            return None, ("unanswered", type(e).__name__), {"status": None, **describe(e)}
        if not _failures(case, response, [gate]):
            return response, None, {}
        raised = log.take()
        info = {"status": response.status_code, "exception": None, "at": "", "message": response.text[:300]}
        if raised:
            info.update(describe(raised[-1]))
        return response, (response.status_code, info["exception"], info["at"]), info

    @hypothesis.seed(seed)
    @hypothesis.settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=hypothesis.Verbosity.quiet,
    )
    @given(strategy(op, hints))
    def run(drawn: tuple[str, Any]) -> None:
        mode, case = drawn
        counts["cases"] += 1
        counts["modes"][mode] += 1
        response, key, info = send(case)
        if key is not None:
            counts["unanswered" if response is None else "server_errors"] += 1
            groups.setdefault(key, {"operation": op.label, **info, "count": 0, "request": None})["count"] += 1
            first_cases.setdefault(key, case)
        if response is None:
            return
        counts["status"][str(response.status_code)] += 1
        for name, failure in _failures(case, response, checks):
            counts["other_failures"][name] += 1
            first_line = failure.message.strip().split("\n", 1)[0][:200]
            kind = other.setdefault(
                (name, failure.title, first_line),
                {"check": name, "title": failure.title, "message": first_line, "count": 0, "operations": []},
            )
            kind["count"] += 1
            if op.label not in kind["operations"]:
                kind["operations"].append(op.label)

    t0 = time.perf_counter()
    run()
    for key, case in first_cases.items():
        groups[key]["request"] = _curl(minimize(case, lambda c, key=key: send(c)[1] == key))
    counts["seconds"] = round(time.perf_counter() - t0, 2)
    for key in ("modes", "status", "other_failures"):
        counts[key] = dict(sorted(counts[key].items()))
    return counts, list(groups.values())


def fuzz(
    app: Litestar,
    catalog: str,
    *,
    max_examples: int,
    seed: int,
    checks: tuple[str, ...] = DEFAULT_CHECKS,
    progress: bool = False,
) -> dict:
    """Fuzz every operation of ``app``'s OpenAPI schema; ``catalog`` is the name of a catalog it
    serves. Returns the report: counts per operation and in total, the groups of server failures
    and the kinds of other failures, most frequent first."""
    log = ExceptionLog()
    app.after_exception.append(log)
    schema = schemathesis.openapi.from_asgi(SCHEMA_PATH, app)
    try:
        check_fns = [getattr(schemathesis.checks, name) for name in checks]
    except AttributeError as e:
        raise SystemExit(f"not a schemathesis check: {e}") from None
    hints = collect_hints(schema, catalog)
    operations: dict[str, dict] = {}
    failures: list[dict] = []
    other: dict[tuple, dict] = {}
    t0 = time.perf_counter()
    for result in schema.get_all_operations():
        op = result.ok()
        hints["token"] = hints["result"] = [fresh_token(schema, hints["id"][0])]
        counts, groups = fuzz_operation(
            op, hints, log, max_examples=max_examples, seed=seed, checks=check_fns, other=other
        )
        operations[op.label] = counts
        failures += groups
        if progress:
            print(
                f"{op.label}: {counts['cases']} cases, {counts['server_errors']} 5xx, "
                f"{counts['unanswered']} unanswered, {counts['seconds']} s",
                file=sys.stderr,
                flush=True,
            )
    return {
        "tool": f"schemathesis {schemathesis.__version__}, hypothesis {hypothesis.__version__}",
        "transport": "asgi (in-process)",
        "max_examples_per_operation": max_examples,
        "seed": seed,
        "gate_check": "not_a_server_error",
        "other_checks": list(checks),
        "operations_tested": len(operations),
        "total_cases": sum(c["cases"] for c in operations.values()),
        "server_errors": sum(c["server_errors"] for c in operations.values()),
        "unanswered": sum(c["unanswered"] for c in operations.values()),
        "other_failures": sum(sum(c["other_failures"].values()) for c in operations.values()),
        "wall_s": round(time.perf_counter() - t0, 1),
        "operations": operations,
        "server_failures": sorted(failures, key=lambda g: -g["count"]),
        "other_failure_kinds": sorted(other.values(), key=lambda k: -k["count"]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default="demo/fashion.duckdb")
    ap.add_argument("--max-examples", type=int, default=800, help="Hypothesis examples per operation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--checks",
        default=",".join(DEFAULT_CHECKS),
        help="comma-separated schemathesis checks counted as other failures ('' for none)",
    )
    args = ap.parse_args(argv)
    path = Path(args.catalog)
    app = create_app([path], Settings())
    report = fuzz(
        app,
        path.stem,
        max_examples=args.max_examples,
        seed=args.seed,
        checks=tuple(c for c in args.checks.split(",") if c),
        progress=True,
    )
    report = {"catalog": str(path), **report}
    print(json.dumps(report, indent=1))
    return 1 if report["server_errors"] or report["unanswered"] else 0


if __name__ == "__main__":
    sys.exit(main())
