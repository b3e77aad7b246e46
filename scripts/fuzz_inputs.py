"""Bad-input fuzzing of three engine surfaces; prints one JSON document, exits 1 on any crash.

A *crash* is any exception other than the engine's typed errors (``CatalogError`` and its
subclasses; for the decoder ``UnreadableImage``), a case slower than the time limit (for a
picture the decoder accepts, plus ``--slow-per-mp`` per megapixel), or a wrong answer where
the answer can be checked. Typed refusals are counted by class, so the report
shows how deep the generated inputs got.

boxes
    Hypothesis generates arbitrary JSON-like values (``st.recursive`` over None, bools, ints of
    every size, floats with nan and inf, dim-like strings such as ``"f07"``, ``" 3 "``,
    ``"f99"``, lists and dicts), the same values as JSON text, text-level attacks (deep
    nesting, numbers of thousands of digits, invalid UTF-8), and near-valid box sets: a valid
    ``{"boxes": [...], "members": [...]}`` with up to three mutations. ``BoxSet.from_json``
    must raise ``InvalidBoxes`` or parse. A parsed set is compared with an independent reading
    of the input (:func:`reference_box_set`), must survive a JSON round trip, and both
    ``Catalog.select`` and its ``to_sql`` text run in DuckDB must return exactly the ids, votes
    and order of a numpy oracle.
refine
    Hypothesis generates the arguments of ``Catalog.refine`` (id lists of mixed types, comma
    strings, numpy arrays of every dtype, ids beyond int64, nan/inf weights, bools for ints,
    model names and random states of every kind) and of ``Catalog.search`` (``id=``, ``k=``,
    and ``text=``/``image=``, which must fail with a CatalogError on a catalog without an
    encoder). A successful call is checked: the labels it counted against an independent
    parse, its ids and scores against a numpy oracle (the fitted boxes and the ranking rule
    for refine, brute-force distances for search), and ``result.sql`` run in DuckDB.
decoder
    Seeded generators, one numpy generator per case so that case ``i`` of a seed can be
    replayed alone, mutate valid PNG, JPEG, GIF, WebP, BMP and TIFF files written by PIL in
    many colour modes (bit flips, interesting integers, insertions, deletions, truncations,
    splices, headers alone, header fields rewritten), craft PNG files from chunks with
    correct CRCs (an IHDR of 100000 x 100000 among them), and build large valid pictures just
    under the pixel limit. Decoding runs in a worker process that is killed and restarted
    when a case hangs or the process dies; unmutated files are checked pixel for pixel.

Both catalogs are synthetic (2,000 random codes, block size 64) and opened read-only; the one
for box sets has sparse ids and an unindexed tail.

    python scripts/fuzz_inputs.py --cases 10000 --seed 0 --surfaces boxes refine decoder
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import io
import json
import math
import multiprocessing
import os
import re
import reprlib
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

import engine
from engine import BoxSet, CatalogError
from engine.ingest.imageio import DecodedImage, UnreadableImage, decode_image
from engine.limits import DEFAULT_MAX_PIXELS, MAX_K

N_DIMS = 32
N_ROWS = 2000
MODELS = ("ensemble", "branch", "tree", "forest")
ENGINE_DIR = Path(engine.__file__).resolve().parent

# -- bookkeeping ---------------------------------------------------------------------------------


class WrongAnswer(AssertionError):
    """A call returned normally but its answer disagrees with an oracle."""

    def __init__(self, check: str, detail: str = ""):
        super().__init__(f"{check}: {detail}" if detail else check)
        self.check = check


def signature(exc: BaseException) -> str:
    """What kind of crash ``exc`` is: the check that failed, or the exception type and the
    innermost engine line it passed through."""
    if isinstance(exc, WrongAnswer):
        return f"wrong answer: {exc.check}"
    return f"{type(exc).__name__} at {engine_frame(exc)}"


def engine_frame(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _in_engine(f.filename)]
    if not frames:
        return "(outside the engine: the fuzz harness)"
    f = frames[-1]
    return f"{Path(f.filename).resolve().relative_to(ENGINE_DIR.parent)}:{f.lineno} {f.name}"


def engine_trace(exc: BaseException) -> list[str]:
    """The engine frames ``exc`` passed through, outermost first: ``file:line function: code``."""
    return [
        f"{Path(f.filename).resolve().relative_to(ENGINE_DIR.parent)}:{f.lineno} {f.name}: {f.line}"
        for f in traceback.extract_tb(exc.__traceback__)
        if _in_engine(f.filename)
    ]


def _in_engine(filename: str) -> bool:
    try:
        Path(filename).resolve().relative_to(ENGINE_DIR)
    except ValueError:
        return False
    return True


class _ShortRepr(reprlib.Repr):
    """reprlib with lengths: a cut string or bytes value says how long it was."""

    def __init__(self):
        super().__init__()
        self.maxstring, self.maxother, self.maxlist, self.maxtuple = 90, 160, 10, 10
        self.maxdict, self.maxlevel, self.maxlong = 8, 5, 60

    def repr_str(self, x: str, level: int) -> str:
        text = super().repr_str(x, level)
        return text + f" (len {len(x)})" if len(x) > self.maxstring else text

    def repr_bytes(self, x: bytes, level: int) -> str:
        text = repr(x[: self.maxstring]) + ("..." if len(x) > self.maxstring else "")
        return text + f" (len {len(x)})" if len(x) > self.maxstring else text


short_repr = _ShortRepr().repr


@dataclass
class Tally:
    """Outcomes, crashes (by signature, with the shortest sample inputs) and notes of a surface."""

    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    checks: Counter = field(default_factory=Counter)
    notes: dict = field(default_factory=dict)
    crashes: dict = field(default_factory=dict)
    slowest: tuple = (0.0, "")
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)

    def crash(self, sig: str, sample: str, error: str, trace: list | None = None, case: Any = None) -> None:
        entry = self.crashes.setdefault(
            sig,
            {
                "count": 0,
                "first_case": self.cases,
                "samples": [],
                "error": error[:300],
                "engine_trace": trace or [],
            },
        )
        entry["count"] += 1
        entry["samples"] = sorted({*entry["samples"], sample}, key=len)[:3]
        if case is not None and ("_case" not in entry or len(sample) < len(short_repr(entry["_case"]))):
            entry["_case"] = case

    def note(self, kind: str, sample: str) -> None:
        entry = self.notes.setdefault(kind, {"count": 0, "samples": []})
        entry["count"] += 1
        entry["samples"] = sorted({*entry["samples"], sample}, key=len)[:3]

    def timed(self, dt: float, sample: str) -> None:
        if dt > self.slowest[0]:
            self.slowest = (dt, sample)

    def report(self) -> dict:
        n_crash = sum(c["count"] for c in self.crashes.values())
        return {
            "cases": self.cases,
            "crashes": n_crash,
            "time_s": round(self.seconds, 2),
            "cases_per_s": round(self.cases / self.seconds, 1) if self.seconds else None,
            "slowest_case": {"ms": round(self.slowest[0] * 1e3, 1), "input": self.slowest[1]},
            "outcomes": dict(self.outcomes.most_common()),
            "checks": dict(self.checks),
            "notes": self.notes,
            **({"timings_s": self.timings} if self.timings else {}),
            "crash_kinds": [
                {"signature": s, **{k: v for k, v in c.items() if k != "_case"}}
                for s, c in sorted(self.crashes.items(), key=lambda kv: -kv[1]["count"])
            ],
        }


def attempt(tally: Tally, check: Callable[[Any], str], case: Any, slow_s: float) -> str | None:
    """Run one case; count its outcome, or record it as a crash. Returns the crash signature."""
    tally.cases += 1
    t0 = time.perf_counter()
    try:
        outcome = check(case)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # RecursionError and MemoryError included: both are crashes here
        sig = signature(e)
        tally.crash(sig, short_repr(case), f"{type(e).__name__}: {e}", engine_trace(e), case)
        return sig
    finally:
        dt = time.perf_counter() - t0
        tally.timed(dt, short_repr(case))
    tally.outcomes[outcome] += 1
    if dt > slow_s:
        sig = f"slow: over {slow_s:g} s"
        tally.crash(sig, short_repr(case), f"took {dt:.2f} s")
        return sig
    return None


def run_hypothesis(strategy: st.SearchStrategy, body: Callable[[Any], None], n: int, rng_seed: int) -> None:
    """Call ``body`` on ``n`` values drawn by Hypothesis (generation phase only; ``body``
    never raises, so nothing is shrunk). Rounds with new seeds top up when Hypothesis stops
    early, e.g. after exhausting a small part of the space."""
    done = 0
    for round_no in range(20):
        if done >= n:
            return
        done += _hypothesis_round(strategy, body, n - done, rng_seed * 1000 + round_no)


def _hypothesis_round(
    strategy: st.SearchStrategy, body: Callable[[Any], None], n: int, round_seed: int
) -> int:
    calls = [0]

    @seed(round_seed)
    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        derandomize=False,
    )
    @given(strategy)
    def driver(value):
        if calls[0] < n:
            calls[0] += 1
            body(value)

    driver()
    return calls[0]


def simpler(value: Any) -> Iterable[Any]:
    """Smaller variants of a case value: entries dropped from dicts, lists, tuples and arrays,
    strings and bytes halved, numbers replaced by 0 or 1, then the same inside each entry."""
    if isinstance(value, dict):
        for key in list(value):
            yield {k: v for k, v in value.items() if k is not key}
        for key, v in value.items():
            for smaller in simpler(v):
                yield {**value, key: smaller}
    elif isinstance(value, (list, tuple)):
        items = list(value)
        for i in range(len(items)):
            yield type(value)(items[:i] + items[i + 1 :])
        for i, v in enumerate(items):
            for smaller in simpler(v):
                yield type(value)(items[:i] + [smaller] + items[i + 1 :])
    elif isinstance(value, np.ndarray) and value.ndim == 1 and len(value) > 1:
        yield value[:1]
        yield value[1:]
    elif isinstance(value, (str, bytes)) and value:
        yield type(value)()
        yield value[: len(value) // 2]
        yield value[len(value) // 2 :]
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and value not in (0, 1):
        yield type(value)(0)
        yield type(value)(1)


def shrink(case: tuple, sig_of: Callable[[tuple], str | None], budget_s: float) -> tuple:
    """Greedy shrinking of a case tuple, part by part: take the first simpler case that still
    crashes with the same signature, until none does or ``budget_s`` is spent."""
    sig = sig_of(case)
    deadline = time.perf_counter() + budget_s
    improved = True
    while improved and time.perf_counter() < deadline:
        improved = False
        variants = (
            case[:i] + (smaller,) + case[i + 1 :]
            for i, part in enumerate(case)
            if not isinstance(part, str)
            for smaller in simpler(part)
        )
        for smaller_case in variants:
            if time.perf_counter() > deadline:
                break
            if sig_of(smaller_case) == sig:
                case, improved = smaller_case, True
                break
    return case


# -- catalogs ------------------------------------------------------------------------------------


def build_catalogs(root: Path, rng_seed: int) -> tuple[Path, Path]:
    """Two synthetic catalogs under ``root``: (box-set catalog, refine catalog).

    The refine catalog holds 2,000 random codes with ids 0..1999, indexed in blocks of 64. The
    box-set catalog holds 1,800 indexed rows with sparse ids (7, 10, 13, ...) and 200 rows
    added after the index build, so selection also scans the insertion-order tail.
    """
    rng = np.random.default_rng(rng_seed)
    refine_path, boxes_path = root / "refine.duckdb", root / "boxes.duckdb"
    with engine.Catalog.create(refine_path) as cat:
        cat.add_codes(rng.integers(0, 256, (N_ROWS, N_DIMS), dtype=np.uint8))
        cat.build_index(block_size=64)
    codes = rng.integers(0, 256, (N_ROWS, N_DIMS), dtype=np.uint8)
    ids = np.arange(N_ROWS, dtype=np.int64) * 3 + 7
    with engine.Catalog.create(boxes_path) as cat:
        cat.add_codes(codes[:1800], ids=ids[:1800])
        cat.build_index(block_size=64)
        cat.add_codes(codes[1800:], ids=ids[1800:])
    return boxes_path, refine_path


@dataclass
class CatalogView:
    """A read-only catalog with its codes (uint8 (n, 32)) and ids (int64 (n,)) in position order."""

    cat: engine.Catalog
    codes: np.ndarray
    ids: np.ndarray
    pos_of: dict

    @classmethod
    def open(cls, path: Path) -> CatalogView:
        cat = engine.Catalog.open(path, read_only=True)
        table = cat.sql("SELECT * FROM codes ORDER BY pos")
        codes = np.stack([table.column(f"f{d:02d}").to_numpy() for d in range(N_DIMS)], axis=1).astype(
            np.uint8
        )
        ids = table.column("id").to_numpy().astype(np.int64)
        return cls(cat, codes, ids, {int(i): p for p, i in enumerate(ids)})

    def sql_rows(self, text: str) -> list[tuple]:
        """The rows of generated SQL run on the catalog file by DuckDB itself (not through the
        console's checks, whose length limit is for typed queries)."""
        cur = self.cat.store.cursor()
        try:
            return [tuple(r) for r in cur.execute(text).fetchall()]
        finally:
            cur.close()


def vote_oracle(codes: np.ndarray, lo: np.ndarray, hi: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Votes per row (int64 (n,)): distinct members with a box [lo, hi] (int (n_boxes, 32))
    holding the row's code."""
    n = codes.shape[0]
    uniq, member_idx = np.unique(np.asarray(members, np.int64), return_inverse=True)
    hit = np.zeros((n, len(uniq)), dtype=bool)
    c = codes.astype(np.int16)
    for b in range(lo.shape[0]):
        dims = np.flatnonzero((lo[b] > 0) | (hi[b] < 255))
        inside = np.all((c[:, dims] >= lo[b, dims]) & (c[:, dims] <= hi[b, dims]), axis=1)
        hit[:, member_idx[b]] |= inside
    return hit.sum(axis=1).astype(np.int64)


def ranked(votes: np.ndarray, min_votes: int, dist: np.ndarray | None = None) -> np.ndarray:
    """Positions with at least ``min_votes`` votes, by votes descending, then ``dist``
    ascending (if given), then position."""
    pos = np.flatnonzero(votes >= max(1, min_votes))
    keys = (pos, -votes[pos]) if dist is None else (pos, dist[pos], -votes[pos])
    return pos[np.lexsort(keys)]


# -- surface 1: box-set JSON ---------------------------------------------------------------------

DIM_STRINGS = [
    "3",
    " 3 ",
    "\t7\n",
    "f07",
    "f00",
    "f31",
    "f32",
    "f99",
    "F07",
    "f7",
    "f007",
    "f-1",
    "-0",
    "007",
    "+3",
    "3.0",
    "--3",
    "\u00b3",
    "\u0663",
    "f\u0660\u0667",
    "f07\n",
    "\nf07",
    " f07",
    "31",
    "32",
    "-1",
    "999999999",
    "9999999999",
    "0x3",
    "1e1",
    "",
    " ",
    "boxes",
    "members",
]
INTERESTING_INTS = [
    0,
    1,
    31,
    32,
    255,
    256,
    -1,
    2**31,
    2**32,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64,
    10**30,
    -(10**30),
]
ODD_FLOATS = [0.0, -0.0, 3.0, 255.0, 255.5, 1e300, -1e-300, math.nan, math.inf, -math.inf]


@functools.cache
def scalars() -> st.SearchStrategy:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-300, 300),
        st.integers(),
        st.sampled_from(INTERESTING_INTS),
        st.floats(),
        st.sampled_from(ODD_FLOATS),
        st.text(max_size=8),
        st.sampled_from(DIM_STRINGS),
    )


@functools.cache
def json_like() -> st.SearchStrategy:
    """Arbitrary JSON values (string keys only)."""
    keys = st.one_of(st.text(max_size=6), st.sampled_from(DIM_STRINGS))
    return st.recursive(
        scalars(),
        lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=5)),
        max_leaves=25,
    )


@functools.cache
def odd_values() -> st.SearchStrategy:
    """What a Python caller might put anywhere: JSON values plus tuples, numpy scalars and arrays,
    sets, non-string dict keys."""
    return st.one_of(
        scalars(),
        json_like(),
        st.builds(np.int64, st.integers(-(2**63), 2**63 - 1)),
        st.builds(np.uint64, st.integers(0, 2**64 - 1)),
        st.builds(np.uint8, st.integers(0, 255)),
        st.builds(np.float64, st.floats()),
        st.just(np.bool_(True)),
        st.tuples(st.integers(-3, 300), st.integers(-3, 300)),
        st.just(np.array(5)),
        st.builds(np.array, st.lists(st.integers(0, 300), max_size=3)),
        st.just(np.array([[1, 2], [3, 4]])),
        st.frozensets(st.integers(0, 3), max_size=3),
        st.dictionaries(
            st.one_of(st.integers(-3, 40), st.none(), st.booleans(), st.just(2.0)), scalars(), max_size=3
        ),
        st.sampled_from([b"f07", b"3", Decimal("3"), Fraction(3, 1), 3 + 0j]),
    )


def deep_text(depth: int, wrapped: bool) -> str:
    inner = "[" * depth + "]" * depth
    return '{"boxes": ' + inner + "}" if wrapped else inner


def big_number_text(digits: int, where: int) -> str:
    number = "1" + "0" * digits
    return [
        '{"boxes": [{"3": [' + number + ", 200]}]}",
        '{"boxes": [{}], "members": [' + number + "]}",
        "[" + number + "]",
        '[{"' + number + '": [1, 2]}]',
    ][where]


@functools.cache
def box_texts() -> st.SearchStrategy:
    """JSON text (str or bytes): well-formed, broken, deeply nested, with huge numbers."""
    return st.one_of(
        json_like().map(json.dumps),
        json_like().map(lambda v: json.dumps(v).encode()),
        json_like().map(lambda v: json.dumps(v).encode("utf-16")),
        st.text(max_size=40),
        st.binary(max_size=40),
        st.builds(deep_text, st.one_of(st.integers(1, 3000), st.integers(1, 200_000)), st.booleans()),
        st.builds(big_number_text, st.integers(1, 20_000), st.integers(0, 3)),
    )


_N_BOXES = st.integers(0, 6)
_BOX_DIMS = st.lists(st.integers(0, N_DIMS - 1), max_size=5)
_SPELLINGS = st.sampled_from(("int", "str", "name", "padded", "np", "zeros"))
_PAIR = st.lists(st.integers(0, 255), min_size=2, max_size=2)
_FORMS = st.sampled_from(("list", "list", "tuple", "float", "np"))
_SHAPES = st.sampled_from(("object", "object", "no_members", "bare"))


@st.composite
def valid_box_set(draw) -> Any:
    """A valid box set in one of its accepted spellings."""
    boxes = []
    for _ in range(draw(_N_BOXES)):
        box = {}
        for d in draw(_BOX_DIMS):
            spelling = draw(_SPELLINGS)
            key = {
                "int": d,
                "str": str(d),
                "name": f"f{d:02d}",
                "padded": f" {d} ",
                "np": np.int64(d),
                "zeros": f"{d:03d}",
            }[spelling]
            lo, hi = sorted(draw(_PAIR))
            form = draw(_FORMS)
            box[key] = {
                "list": [lo, hi],
                "tuple": (lo, hi),
                "float": [float(lo), float(hi)],
                "np": np.array([lo, hi], dtype=np.uint8),
            }[form]
        boxes.append(box)
    n = len(boxes)
    members = draw(
        st.one_of(
            st.none(),
            st.lists(st.integers(0, 3), min_size=n, max_size=n),
            st.lists(st.sampled_from([-(2**63), 2**63 - 1, 0, 7]), min_size=n, max_size=n),
        )
    )
    shape = draw(_SHAPES)
    if shape == "bare" or (shape == "no_members" and members is None):
        return boxes if shape == "bare" else {"boxes": boxes}
    return {"boxes": boxes, "members": members}


MUTATIONS = (
    "bound",
    "bounds",
    "swap",
    "key",
    "respell",
    "alias",
    "box",
    "boxes",
    "members_len",
    "member",
    "members",
    "extra_key",
    "drop_boxes",
)
_MUTATION_OPS = st.sampled_from(MUTATIONS)
_N_MUTATIONS = st.integers(0, 3)
_ONE_IN_FIVE = st.integers(0, 4)


@st.composite
def near_valid_box_set(draw) -> Any:
    """A valid box set with up to three mutations, sometimes sent as JSON text."""
    data = draw(valid_box_set())
    for _ in range(draw(_N_MUTATIONS)):
        data = _mutate_box_set(draw, data, draw(_MUTATION_OPS))
    if draw(_ONE_IN_FIVE) == 0:
        with contextlib.suppress(TypeError, ValueError):
            data = json.dumps(data)
    return data


def _mutate_box_set(draw, data: Any, op: str) -> Any:
    data = copy.deepcopy(data)
    top = data if isinstance(data, dict) else None
    boxes = top.get("boxes") if top is not None else data
    box_list = boxes if isinstance(boxes, list) else []
    dicts = [b for b in box_list if isinstance(b, dict) and b]
    if op in ("bound", "bounds", "swap", "key", "respell", "alias") and dicts:
        box = draw(st.sampled_from(dicts))
        key = draw(st.sampled_from(list(box)))
        bounds = box[key]
        if op == "bound" and isinstance(bounds, (list, tuple)) and len(bounds) == 2:
            pair = list(bounds)
            pair[draw(st.integers(0, 1))] = draw(odd_values())
            box[key] = pair
        elif op == "bounds":
            box[key] = draw(st.one_of(odd_values(), st.lists(st.integers(0, 255), max_size=4)))
        elif op == "swap" and isinstance(bounds, (list, tuple)) and len(bounds) == 2:
            box[key] = [bounds[1], bounds[0]]
        elif op == "key":
            box[
                draw(
                    st.one_of(
                        st.sampled_from(DIM_STRINGS),
                        st.integers(-5, 40),
                        st.sampled_from([None, True, 2.0, (1, 2), np.uint8(3), np.bool_(False), b"3"]),
                    )
                )
            ] = box.pop(key)
        elif op == "respell" and _dim_of(key) is not None:
            d = _dim_of(key)
            odd = draw(
                st.sampled_from(
                    [
                        f"f{d:02d}\n",
                        f" f{d:02d}",
                        f"f{d:02d} ",
                        f"F{d:02d}",
                        f"f{d}",
                        f"{d}\n",
                        f"+{d}",
                        f"{d}.0",
                        f"0{d:09d}",
                        f"-{d}" if d else "-0",
                    ]
                )
            )
            box[odd] = box.pop(key)
        elif op == "alias":
            d = _dim_of(key)
            if d is not None:
                alias = draw(st.sampled_from([d, str(d), f"f{d:02d}", f" {d}", np.int32(d)]))
                lo, hi = sorted(draw(_PAIR))
                box[alias] = [lo, hi]
    elif op == "box" and box_list:
        box_list[draw(st.integers(0, len(box_list) - 1))] = draw(odd_values())
    elif op == "boxes":
        replacement = draw(st.one_of(odd_values(), st.just(tuple(box_list))))
        if top is not None:
            top["boxes"] = replacement
        else:
            data = replacement
    elif op in ("members_len", "member", "members") and top is not None:
        members = top.get("members")
        if op == "members_len" and isinstance(members, list):
            if members and draw(st.booleans()):
                members.pop()
            else:
                members.append(draw(st.integers(0, 3)))
        elif op == "member" and isinstance(members, list) and members:
            members[draw(st.integers(0, len(members) - 1))] = draw(odd_values())
        elif op == "members":
            top["members"] = draw(odd_values())
    elif op == "extra_key":
        extra = draw(
            st.one_of(st.sampled_from(["Members", "min_votes", "box", ""]), st.integers(0, 3), st.none())
        )
        data = {"boxes": data} if top is None else data
        data[extra] = draw(scalars())
    elif op == "drop_boxes" and top is not None:
        top.pop("boxes", None)
    return data


def _dim_of(key: Any) -> int | None:
    try:
        return _ref_dim(key)
    except Rejected:
        return None


@functools.cache
def box_cases() -> st.SearchStrategy:
    """``(data, min_votes)`` for ``BoxSet.from_json(data)`` and ``Catalog.select``."""
    data = st.one_of(json_like(), box_texts(), near_valid_box_set(), near_valid_box_set())
    return st.tuples(data, st.integers(1, 4))


class Rejected(Exception):
    """The reference reading refuses the input."""


def _ref_dim(key: Any) -> int:
    if isinstance(key, (bool, np.bool_)):
        raise Rejected("bool dim")
    if isinstance(key, (int, np.integer)):
        d = int(key)
    elif isinstance(key, str) and re.fullmatch(r"f[0-9]{2}", key):
        d = int(key[1:])
    elif isinstance(key, str) and re.fullmatch(r"-?[0-9]{1,9}", key.strip()):
        d = int(key.strip())
    else:
        raise Rejected(f"dim {key!r}")
    if not 0 <= d < N_DIMS:
        raise Rejected(f"dim {d} out of range")
    return d


def _ref_bound(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise Rejected("bool bound")
    if not (isinstance(value, (int, np.integer)) or _integral_float(value)):
        raise Rejected(f"bound {value!r}")
    x = int(value)
    if not 0 <= x <= 255:
        raise Rejected(f"bound {x} out of range")
    return x


def _as_list(value: Any, what: str) -> list:
    """``value`` as a list if it is a sequence of items (not a string, bytes or mapping)."""
    if isinstance(value, (str, bytes, Mapping)):
        raise Rejected(f"{what} not a list")
    try:
        return list(value)
    except TypeError:  # not iterable, or a 0-d array
        raise Rejected(f"{what} not a list") from None


def _integral_float(value: Any) -> bool:
    return isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer()


def reference_box_set(data: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lo, hi, members)`` as the documented format reads ``data``, written without the
    engine's code: an object with "boxes" (and optionally "members") or a bare list; a box
    maps a dim (int, digit string possibly padded with whitespace, or exactly ``fNN``) to a
    pair of integer bounds in 0..255 (integer-valued floats allowed), ``lo <= hi``; dims
    named twice intersect; members are one int64 per box. Raises Rejected otherwise."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except Exception as e:
            raise Rejected(f"not JSON: {type(e).__name__}") from None
    if isinstance(data, Mapping):
        if not set(data) <= {"boxes", "members"} or "boxes" not in data:
            raise Rejected("keys")
        boxes, members = data["boxes"], data.get("members")
    elif isinstance(data, list):
        boxes, members = data, None
    else:
        raise Rejected("top level")
    boxes = _as_list(boxes, "boxes")
    lo = np.zeros((len(boxes), N_DIMS), np.int64)
    hi = np.full((len(boxes), N_DIMS), 255, np.int64)
    for i, box in enumerate(boxes):
        if not isinstance(box, Mapping):
            raise Rejected("box not a mapping")
        for key, bounds in box.items():
            d = _ref_dim(key)
            if (
                not isinstance(bounds, (list, tuple, np.ndarray))
                or getattr(bounds, "ndim", 1) != 1
                or len(bounds) != 2
            ):
                raise Rejected("bounds not a pair")
            a, b = _ref_bound(bounds[0]), _ref_bound(bounds[1])
            if a > b:
                raise Rejected("lo > hi")
            lo[i, d], hi[i, d] = max(lo[i, d], a), min(hi[i, d], b)
            if lo[i, d] > hi[i, d]:
                raise Rejected("aliases do not overlap")
    if members is None:
        return lo, hi, np.zeros(len(boxes), np.int64)
    members = _as_list(members, "members")
    if len(members) != len(boxes):
        raise Rejected("members length")
    for m in members:
        if isinstance(m, (bool, np.bool_)) or not isinstance(m, (int, np.integer)):
            raise Rejected(f"member {m!r}")
        if not -(2**63) <= int(m) < 2**63:
            raise Rejected("member beyond int64")
    return lo, hi, np.array([int(m) for m in members], np.int64)


def check_box_case(view: CatalogView, tally: Tally, case: tuple) -> str:
    """One box-set case: parse, compare with the reference reading, select, run the SQL."""
    data, min_votes = case
    try:
        ref = reference_box_set(data)
    except Rejected:
        ref = None
    try:
        boxset = BoxSet.from_json(data)
    except CatalogError as e:
        if ref is not None:
            tally.note(f"rejected input the reference accepts ({type(e).__name__})", short_repr(data))
        return type(e).__name__
    if ref is None:
        tally.note("accepted input the reference rejects", short_repr(data))
        ref = (boxset.lo.astype(np.int64), boxset.hi.astype(np.int64), boxset.members)
    else:
        tally.checks["parse_compared"] += 1
        if not (
            np.array_equal(boxset.lo, ref[0])
            and np.array_equal(boxset.hi, ref[1])
            and np.array_equal(boxset.members, ref[2])
        ):
            raise WrongAnswer("parsed boxes differ from the input")
    if BoxSet.from_json(json.dumps(boxset.to_json())) != boxset:
        raise WrongAnswer("to_json/from_json round trip changes the box set")
    result = view.cat.select(boxset, min_votes=min_votes)
    votes = vote_oracle(view.codes, *ref)
    want = ranked(votes, min_votes)
    got = (result.ids.tolist(), result.votes.tolist())
    if got != (view.ids[want].tolist(), votes[want].tolist()):
        raise WrongAnswer("select differs from the numpy oracle", f"{len(got[0])} vs {len(want)} rows")
    rows = view.sql_rows(boxset.to_sql("codes", min_votes=min_votes))
    if [r[0] for r in rows] != got[0] or [r[1] for r in rows] != got[1]:
        raise WrongAnswer("to_sql in DuckDB differs from select", f"{len(rows)} vs {len(got[0])} rows")
    tally.checks["select_and_sql_compared"] += 1
    tally.checks["rows_compared"] += len(want)
    return "ok"


# -- surface 2: refine and search arguments ------------------------------------------------------

ID_STRINGS = [
    "1",
    " 3 ",
    "-5",
    "--5",
    "\u00b2",
    "\u0661\u0662",
    "\uff13",
    "1,2",
    "",
    " ",
    "abc",
    "9" * 19,
    "9" * 20,
    "-",
    "+3",
    "0x10",
    "1_0",
    "3.0",
    "1e3",
    "\u00a07",
    "-0",
]


@functools.cache
def id_scalars() -> st.SearchStrategy:
    return st.one_of(
        st.integers(0, N_ROWS - 1),
        st.integers(0, N_ROWS - 1),
        st.integers(-5, N_ROWS + 100),
        st.sampled_from(INTERESTING_INTS),
        st.integers(),
        st.builds(np.int64, st.integers(-5, N_ROWS + 5)),
        st.builds(np.uint64, st.integers(0, 2**64 - 1)),
        st.builds(np.int8, st.integers(-128, 127)),
        st.builds(float, st.integers(0, N_ROWS - 1)),
        st.floats(),
        st.sampled_from(ODD_FLOATS),
        st.builds(str, st.integers(-5, N_ROWS + 5)),
        st.sampled_from(ID_STRINGS),
        st.text(max_size=5),
        st.booleans(),
        st.none(),
        st.just(b"3"),
        st.lists(st.integers(0, 5), max_size=2),
        st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
        st.just(np.array([3])),
    )


NUMPY_ID_DTYPES = [np.int64, np.int32, np.int8, np.uint8, np.uint64, np.float64, np.float32, bool, object]


@st.composite
def numpy_ids(draw) -> np.ndarray:
    dtype = draw(st.sampled_from(NUMPY_ID_DTYPES))
    values = draw(st.lists(st.one_of(st.integers(0, N_ROWS - 1), st.integers(-5, 300)), max_size=8))
    if dtype is np.uint64:
        if draw(st.booleans()):
            values.append(draw(st.integers(2**63, 2**64 - 1)))
        values = [v % 2**64 for v in values]
    if dtype is object:
        return np.array(values + draw(st.lists(id_scalars(), max_size=2)) + [None], dtype=object)[:-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = np.array(values).astype(dtype) if values else np.array([], dtype=dtype)
    shape = draw(st.sampled_from(["1d", "1d", "2d", "0d"]))
    if shape == "2d" and arr.size:
        return arr.reshape(1, -1)
    if shape == "0d" and arr.size:
        return arr[0:1].reshape(())
    return arr


@functools.cache
def id_lists() -> st.SearchStrategy:
    """Values for ``positives=`` and ``negatives=``."""
    valid = st.lists(st.integers(0, N_ROWS - 1), min_size=1, max_size=8)
    return st.one_of(
        valid,
        valid,
        valid,
        st.lists(id_scalars(), max_size=6),
        st.tuples(id_scalars(), id_scalars()),
        numpy_ids(),
        valid.map(lambda v: ",".join(map(str, v))),
        valid.map(lambda v: " , ".join(map(str, v)) + ","),
        st.lists(st.sampled_from(ID_STRINGS)).map(",".join),
        valid.map(lambda v: ",".join(map(str, v)).encode()),
        st.binary(max_size=6),
        st.frozensets(st.integers(0, N_ROWS - 1), max_size=4),
        st.none(),
        st.integers(),
        st.floats(),
        st.dictionaries(st.integers(0, N_ROWS - 1), st.integers(), max_size=3),
        st.just(()),
    )


@functools.cache
def models() -> st.SearchStrategy:
    return st.one_of(
        st.sampled_from(MODELS),
        st.sampled_from(MODELS),
        st.sampled_from(MODELS),
        st.sampled_from(["ENSEMBLE", "", "tree ", "forest\n", "knn", "branches"]),
        st.builds(np.str_, st.sampled_from(MODELS)),
        st.just(np.array(["tree"])),
        st.just(np.array([1, 2])),
        st.none(),
        st.integers(),
        st.lists(st.sampled_from(MODELS), max_size=2),
        st.just(b"tree"),
    )


@functools.cache
def sampled_counts() -> st.SearchStrategy:
    return st.one_of(
        st.integers(0, 600),
        st.integers(0, 600),
        st.integers(-10, 100_010),
        st.sampled_from([0, 100_000, 100_001, -1, 2**63, 2**64, -(2**70)]),
        st.builds(np.int64, st.integers(0, 700)),
        st.builds(np.uint64, st.integers(0, 2**64 - 1)),
        st.floats(),
        st.just(500.0),
        st.booleans(),
        st.sampled_from(["500", None, [500]]),
    )


@functools.cache
def weights() -> st.SearchStrategy:
    return st.one_of(
        st.floats(0.01, 100),
        st.floats(0.01, 100),
        st.floats(),
        st.sampled_from(ODD_FLOATS),
        st.integers(-5, 10**7),
        st.sampled_from([10**400, -(10**400), 2**1024, 1e6, 1e6 + 1]),
        st.sampled_from(["1.0", "nan", "inf", "1e309", "abc", "", None, True, False, [1.0], {}]),
        st.builds(np.float32, st.floats(width=32)),
        st.builds(np.float16, st.floats(width=16)),
        st.sampled_from(
            [
                Decimal("0.5"),
                Decimal("NaN"),
                Fraction(1, 3),
                1 + 1j,
                np.array([0.5]),
                np.array([0.5, 2.0]),
                np.array(2.0),
            ]
        ),
    )


@functools.cache
def random_states() -> st.SearchStrategy:
    return st.one_of(
        st.none(),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.integers(),
        st.sampled_from([-1, 2**32, 2**40, 2**63, 2**100, -(2**63)]),
        st.builds(np.int64, st.integers(0, 2**63 - 1)),
        st.builds(np.uint64, st.integers(0, 2**64 - 1)),
        st.builds(np.random.default_rng, st.integers(0, 99)),
        st.builds(np.random.RandomState, st.integers(0, 99)),
        st.booleans(),
        st.floats(),
        st.sampled_from(["0", "abc", b"1", [1, 2], (1,), {"seed": 1}]),
    )


VALID_OPTIONS = {
    "model": st.sampled_from(MODELS),
    "sampled_negatives": st.integers(0, 600),
    "negative_weight": st.floats(0.01, 100),
    "random_state": st.one_of(st.none(), st.integers(0, 2**32 - 1)),
}
_PERCENT = st.integers(0, 99)


@st.composite
def refine_kwargs(draw) -> dict:
    """Arguments of ``Catalog.refine``: labels valid half the time; each option left out a
    quarter of the time, else valid or odd, so that calls get past validation often enough
    to train models on odd but accepted values."""
    valid_ids = st.lists(st.integers(0, N_ROWS - 1), min_size=1, max_size=8)
    kwargs = {"positives": draw(valid_ids if draw(_PERCENT) < 50 else id_lists())}
    roll = draw(_PERCENT)
    if roll >= 30:
        kwargs["negatives"] = draw(valid_ids if roll < 65 else id_lists())
    for name, odd in (
        ("model", models()),
        ("sampled_negatives", sampled_counts()),
        ("negative_weight", weights()),
        ("random_state", random_states()),
    ):
        roll = draw(_PERCENT)
        if roll >= 25:
            kwargs[name] = draw(VALID_OPTIONS[name] if roll < 70 else odd)
    return kwargs


@functools.cache
def ks() -> st.SearchStrategy:
    return st.one_of(
        st.integers(1, 200),
        st.integers(1, 200),
        st.integers(-5, 2**20),
        st.sampled_from([0, 1, N_ROWS, N_ROWS + 1, MAX_K, MAX_K + 1, 2**63, 2**64, -1]),
        st.builds(np.int64, st.integers(-5, 3000)),
        st.builds(np.uint64, st.integers(0, 2**64 - 1)),
        st.builds(np.uint8, st.integers(0, 255)),
        st.floats(),
        st.just(5.0),
        st.booleans(),
        st.sampled_from(["5", None, [5], np.array([5])]),
    )


@st.composite
def search_kwargs(draw) -> dict:
    shape = draw(st.sampled_from(["id", "id", "id", "text", "image", "none", "two"]))
    kwargs: dict = {}
    if shape in ("id", "two"):
        roll = draw(_PERCENT)
        kwargs["id"] = draw(
            st.integers(0, N_ROWS - 1) if roll < 40 else id_scalars() if roll < 85 else id_lists()
        )
    if shape in ("text", "two"):
        kwargs["text"] = draw(
            st.one_of(st.text(max_size=20), st.sampled_from(["", " ", "x" * 2000]), odd_values())
        )
    if shape == "image":
        kwargs["image"] = draw(st.one_of(st.binary(max_size=20), st.text(max_size=10), odd_values()))
    roll = draw(_PERCENT)
    if roll >= 20:
        kwargs["k"] = draw(st.integers(1, 300) if roll < 60 else ks())
    return kwargs


@functools.cache
def refine_cases() -> st.SearchStrategy:
    """``("refine", kwargs)`` or ``("search", kwargs)``, refine twice as often."""
    return st.one_of(
        refine_kwargs().map(lambda kw: ("refine", kw)),
        refine_kwargs().map(lambda kw: ("refine", kw)),
        search_kwargs().map(lambda kw: ("search", kw)),
    )


def reference_ids(values: Any) -> list[int]:
    """Image ids as ``Catalog.refine`` documents them, read without the engine's code: None is
    no ids; a str (or UTF-8 bytes) is a comma-separated list; otherwise an iterable of ints,
    integer-valued finite floats, or strings of decimal digits with an optional minus sign and
    surrounding whitespace. Raises Rejected otherwise."""
    if values is None:
        return []
    if isinstance(values, bytes):
        try:
            values = values.decode("utf-8")
        except UnicodeDecodeError:
            raise Rejected("bytes not UTF-8") from None
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise Rejected("not a list")
    out = []
    for v in list(values):
        if isinstance(v, (bool, np.bool_)):
            raise Rejected("bool id")
        digits = isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v)
        if not (isinstance(v, (int, np.integer)) or digits or _integral_float(v)):
            raise Rejected(f"id {v!r}")
        out.append(int(v))
    return sorted(set(out))


def _ref_or_none(values: Any) -> list[int] | None:
    try:
        return reference_ids(values)
    except Rejected:
        return None


def check_refine_case(view: CatalogView, tally: Tally, case: tuple) -> str:
    """One refine or search call on the read-only catalog, checked when it succeeds."""
    kind, kwargs = case
    call = view.cat.refine if kind == "refine" else view.cat.search
    try:
        result = call(**kwargs)
    except CatalogError as e:
        return f"{kind}: {type(e).__name__}"
    if kind == "refine":
        _check_refine_result(view, tally, kwargs, result)
    else:
        _check_search_result(view, tally, kwargs, result)
    rows = view.sql_rows(result.sql)
    if [r[0] for r in rows] != result.ids.tolist() or [r[1] for r in rows] != result.scores.tolist():
        raise WrongAnswer(f"{kind}: result.sql in DuckDB differs from the result", f"{len(rows)} rows")
    tally.checks[f"{kind}_sql_compared"] += 1
    return f"{kind}: ok"


def _check_refine_result(view: CatalogView, tally: Tally, kwargs: dict, result: engine.Result) -> None:
    pos, neg = _ref_or_none(kwargs["positives"]), _ref_or_none(kwargs.get("negatives", ()))
    if pos is None or neg is None:
        tally.note("refine accepted labels the reference rejects", short_repr(kwargs))
    else:
        if not pos or set(pos) & set(neg) or not all(i in view.pos_of for i in pos + neg):
            raise WrongAnswer("refine accepted labels that are empty, overlapping or unknown")
        if (result.stats["positives"], result.stats["negatives"]) != (len(pos), len(neg)):
            raise WrongAnswer("refine counted other labels than it was given")
    model = result.model
    boxes = model.boxes_
    votes = vote_oracle(view.codes, boxes.lo.astype(np.int64), boxes.hi.astype(np.int64), boxes.members)
    pos_rows = [view.pos_of[i] for i in (pos or [])]
    if pos_rows:
        center = np.rint(view.codes[pos_rows].astype(np.float64).mean(axis=0)).astype(np.int64)
        dist = ((view.codes.astype(np.int64) - center) ** 2).sum(axis=1)
        want = ranked(votes, int(model.min_votes_), dist)
        if result.ids.tolist() != view.ids[want].tolist() or result.scores.tolist() != votes[want].tolist():
            raise WrongAnswer(
                "refine result differs from its boxes' numpy oracle", f"{len(result.ids)} vs {len(want)} rows"
            )
        tally.checks["refine_oracle_compared"] += 1


def _check_search_result(view: CatalogView, tally: Tally, kwargs: dict, result: engine.Result) -> None:
    if {name for name, v in kwargs.items() if v is not None} - {"k"} != {"id"}:
        raise WrongAnswer("search answered without an encoder or with several queries")
    ids = _ref_or_none([kwargs["id"]])
    k = kwargs.get("k", 60)
    if ids is None or len(ids) != 1 or ids[0] not in view.pos_of:
        raise WrongAnswer("search accepted an id the reference rejects")
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise WrongAnswer("search accepted a k outside 1..100000")
    q = view.codes[view.pos_of[ids[0]]].astype(np.int64)
    dist = ((view.codes.astype(np.int64) - q) ** 2).sum(axis=1)
    want = np.lexsort((np.arange(len(dist)), dist))[: int(k)]
    if result.ids.tolist() != view.ids[want].tolist() or result.scores.tolist() != dist[want].tolist():
        raise WrongAnswer("search differs from brute-force distances")
    tally.checks["search_oracle_compared"] += 1


# -- surface 3: the image decoder ----------------------------------------------------------------


@dataclass
class Base:
    """A valid file written by PIL and what decoding it must give: the displayed size and the
    RGB pixels (None: unchecked), compared exactly (tolerance 1) or, for lossy formats, by
    mean absolute difference."""

    name: str
    data: bytes
    size: tuple[int, int]
    expected: np.ndarray | None
    lossy: bool = False


@dataclass
class DecoderCase:
    """One decoder input and what is known about the right answer.

    value : bytes, a path, or ``("large", mode, width, height)`` (built by :func:`materialize`)
    base : a decode that succeeds must give this base file's pixels (an unmutated base, or
        one with its tail cut off: success then means nothing that mattered was cut)
    intact : the input is the base file unchanged, so refusing it within max_pixels is wrong
    must_refuse : why the input has to be refused, when that is known (its image data
        decompresses to fewer bytes than the header's rows need)
    """

    desc: str
    value: Any
    max_pixels: int = DEFAULT_MAX_PIXELS
    base: str | None = None
    intact: bool = False
    must_refuse: str | None = None


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _composite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None]
    return np.rint((rgb.astype(np.float64) * a + 255.0 * (255.0 - a)) / 255.0).astype(np.uint8)


def _grey(g: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(g, np.uint8)[..., None], 3, axis=2)


def _scaled(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return _grey(np.clip(np.rint((a.astype(np.float64) - lo) * 255.0 / (hi - lo)), 0, 255))


ORIENT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, -1)[::-1],
    8: lambda a: np.rot90(a, 1),
}


def make_bases() -> list[Base]:
    """Small valid files in every format and the colour modes PIL writes for it, with the
    pixels each must decode to, computed from the arrays they were made of."""
    rng = np.random.default_rng(20240601)
    out: list[Base] = []

    def add(name, image, fmt, expected, lossy=False, size=None, **kwargs):
        out.append(Base(name, _save(image, fmt, **kwargs), size or image.size, expected, lossy))

    w, h = 23, 17
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
    alpha[0, :3] = (0, 255, 128)
    grey = rng.integers(0, 256, (h, w), dtype=np.uint8)
    idx = rng.integers(0, 16, (h, w), dtype=np.uint8)
    pal = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    pimg = Image.fromarray(idx, "P")
    pimg.putpalette(pal.tobytes())
    ptrans = _grey(np.full((h, w), 255)).copy()
    ptrans[idx != 3] = pal[idx[idx != 3]]
    bits = grey > 127
    g16 = rng.integers(0, 65536, (h, w)).astype(np.uint16)
    i32 = rng.integers(-100_000, 100_000, (h, w)).astype(np.int32)
    f32 = rng.normal(size=(h, w)).astype(np.float32)
    smooth = np.clip(
        np.add.outer(np.arange(h) * 6, np.arange(w) * 5)[..., None] + np.array([0, 40, 80]), 0, 255
    )
    smooth = smooth.astype(np.uint8)
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    la = Image.fromarray(np.dstack([grey, alpha]), "LA")

    add("png-rgb", Image.fromarray(rgb), "PNG", rgb)
    add("png-rgba", rgba, "PNG", _composite(rgb, alpha))
    add("png-l", Image.fromarray(grey), "PNG", _grey(grey))
    add("png-la", la, "PNG", _composite(_grey(grey), alpha))
    add("png-p", pimg, "PNG", pal[idx])
    add("png-p-transparency", pimg, "PNG", ptrans, transparency=3)
    add("png-1", Image.fromarray(bits), "PNG", _grey(bits * 255))
    add("png-i16", Image.fromarray(g16), "PNG", _scaled(g16, 0, 65535))
    for o in (3, 6, 8):
        ex = Image.Exif()
        ex[0x0112] = o
        shown = np.ascontiguousarray(ORIENT[o](rgb))
        add(
            f"png-exif-{o}",
            Image.fromarray(rgb),
            "PNG",
            shown,
            size=(shown.shape[1], shown.shape[0]),
            exif=ex.tobytes(),
        )
    add("jpeg-rgb", Image.fromarray(smooth), "JPEG", smooth, lossy=True, quality=95)
    add("jpeg-l", Image.fromarray(smooth[..., 0]), "JPEG", _grey(smooth[..., 0]), lossy=True, quality=95)
    add("jpeg-progressive", Image.fromarray(smooth), "JPEG", smooth, lossy=True, quality=95, progressive=True)
    add("jpeg-cmyk", Image.fromarray(smooth).convert("CMYK"), "JPEG", None)
    ex = Image.Exif()
    ex[0x0112] = 6
    shown = np.ascontiguousarray(ORIENT[6](smooth))
    add(
        "jpeg-exif-6",
        Image.fromarray(smooth),
        "JPEG",
        shown,
        lossy=True,
        size=(h, w),
        quality=95,
        exif=ex.tobytes(),
    )
    big = np.clip(
        np.add.outer(np.arange(1030) // 5, np.arange(1100) // 5)[..., None] + np.array([0, 30, 60]), 0, 255
    ).astype(np.uint8)
    add("jpeg-draft-1100x1030", Image.fromarray(big), "JPEG", None, quality=80)
    add("gif-p", pimg, "GIF", pal[idx])
    add("gif-p-transparency", pimg, "GIF", ptrans, transparency=3)
    frame2 = Image.fromarray(((idx + 5) % 16).astype(np.uint8), "P")
    frame2.putpalette(pal.tobytes())
    add("gif-animated", pimg, "GIF", pal[idx], save_all=True, append_images=[frame2], duration=50)
    add("webp-lossless-rgb", Image.fromarray(rgb), "WEBP", rgb, lossless=True)
    add("webp-lossless-rgba", rgba, "WEBP", _composite(rgb, alpha), lossless=True)
    add("webp-lossy", Image.fromarray(smooth), "WEBP", smooth, lossy=True, quality=95)
    add(
        "webp-animated",
        Image.fromarray(rgb),
        "WEBP",
        rgb,
        lossless=True,
        save_all=True,
        append_images=[Image.fromarray(rgb[::-1].copy())],
    )
    add("bmp-rgb", Image.fromarray(rgb), "BMP", rgb)
    add("bmp-rgba", rgba, "BMP", rgb)
    add("bmp-p", pimg, "BMP", pal[idx])
    add("bmp-1", Image.fromarray(bits), "BMP", _grey(bits * 255))
    add("bmp-l", Image.fromarray(grey), "BMP", _grey(grey))
    for comp in ("raw", "tiff_lzw", "tiff_adobe_deflate", "packbits"):
        add(f"tiff-rgb-{comp}", Image.fromarray(rgb), "TIFF", rgb, compression=comp)
    add("tiff-jpeg", Image.fromarray(smooth), "TIFF", smooth, lossy=True, compression="jpeg", quality=95)
    add("tiff-rgba", rgba, "TIFF", _composite(rgb, alpha))
    add("tiff-l", Image.fromarray(grey), "TIFF", _grey(grey))
    add("tiff-i16", Image.fromarray(g16), "TIFF", _scaled(g16, 0, 65535))
    add("tiff-i32", Image.fromarray(i32), "TIFF", _scaled(i32, float(i32.min()), float(i32.max())))
    add("tiff-f", Image.fromarray(f32), "TIFF", _scaled(f32, float(f32.min()), float(f32.max())))
    add("tiff-cmyk", Image.fromarray(rgb).convert("CMYK"), "TIFF", None)
    add("tiff-1-group4", Image.fromarray(bits), "TIFF", _grey(bits * 255), compression="group4")
    add(
        "tiff-multipage",
        Image.fromarray(rgb),
        "TIFF",
        rgb,
        save_all=True,
        append_images=[Image.fromarray(grey)],
    )
    return out


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_file(
    width: int,
    height: int,
    depth: int = 8,
    colour: int = 2,
    interlace: int = 0,
    chunks: Iterable[tuple[bytes, bytes]] = (),
    end: bool = True,
) -> bytes:
    """A PNG from an IHDR with any fields (unsigned 32-bit sizes) and the given chunks, all
    with correct CRCs."""
    ihdr = struct.pack(">IIBBBBB", width & 0xFFFFFFFF, height & 0xFFFFFFFF, depth, colour, 0, 0, interlace)
    body = b"".join(png_chunk(k, p) for k, p in chunks)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + body + (png_chunk(b"IEND", b"") if end else b"")


def fix_png_crcs(data: bytearray) -> bytearray:
    """Recompute the CRC of every complete chunk, so mutations reach past the CRC checks."""
    pos = 8
    while pos + 12 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        end = pos + 8 + length
        if end + 4 > len(data):
            break
        data[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(data[pos + 4 : end])))
        pos = end + 4
    return data


def zero_stream(row_bytes: int, rows: int, level: int = 6) -> bytes:
    """zlib data of ``rows`` PNG scanlines of zeros (filter byte 0), compressed row by row."""
    z = zlib.compressobj(level)
    row = bytes(row_bytes + 1)
    parts = [z.compress(row) for _ in range(rows)]
    return b"".join(parts) + z.flush()


LARGE_MODES = {
    "grey16": (16, 0, 2),
    "grey16-alpha": (16, 4, 4),
    "rgb8": (8, 2, 3),
    "rgba8": (8, 6, 4),
    "rgb16": (16, 2, 6),
    "rgba16": (16, 6, 8),
    "grey8": (8, 0, 1),
    "palette8": (8, 3, 1),
}


def large_png(mode: str, width: int, height: int) -> bytes:
    """A valid all-zero PNG of ``width x height``: a file of a few hundred KB that decodes to
    as many pixels as the limit allows."""
    depth, colour, bpp = LARGE_MODES[mode]
    chunks = [(b"PLTE", bytes(768))] if colour == 3 else []
    chunks.append((b"IDAT", zero_stream(width * bpp, height)))
    return png_file(width, height, depth, colour, chunks=chunks)


INTERESTING_SIZES = [
    0,
    1,
    2,
    3,
    7,
    255,
    256,
    4096,
    16383,
    16384,
    32767,
    32768,
    65535,
    65536,
    100_000,
    2**31 - 1,
    2**31,
    2**32 - 1,
]
INTERESTING_WORDS = [
    0,
    1,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x10000,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
    100_000,
    65_535,
    16_384,
]


def special_cases(bases: list[Base]) -> list[DecoderCase]:
    """Hand-made decoder cases, run first: every base file (also at exactly its pixel count as
    ``max_pixels``, and one below), huge and empty declared sizes, compressed-text bombs,
    empty and odd inputs, paths, large valid pictures, and each base with its size fields
    rewritten."""
    png = next(b for b in bases if b.name == "png-rgb")
    w, h = png.size
    cases = [DecoderCase(f"base {b.name}", b.data, base=b.name, intact=True) for b in bases]
    cases += [
        DecoderCase(f"base {b.name} max_pixels=w*h", b.data, b.size[0] * b.size[1], base=b.name, intact=True)
        for b in bases
    ]
    cases += [
        DecoderCase(
            f"base {b.name} max_pixels=w*h-1",
            b.data,
            b.size[0] * b.size[1] - 1,
            must_refuse="more pixels than max_pixels",
        )
        for b in bases
    ]
    idat = zlib.compress(bytes(1000))
    for width, height in [
        (100_000, 100_000),
        (65_535, 65_535),
        (0, 0),
        (2**31 - 1, 1),
        (1, 2**32 - 1),
        (9000, 9000),
        (20_000, 4000),
        (1, 89_000_000),
        (1, 1000),
    ]:
        cases.append(
            DecoderCase(
                f"png IHDR {width}x{height}, IDAT of 1000 zero bytes",
                png_file(width, height, chunks=[(b"IDAT", idat)]),
                must_refuse=png_shortfall(width, height, 8, 2, 0, 1000),
            )
        )
    bomb = zlib.compress(bytes(100_000_000), 9)
    full = [(b"IDAT", zlib.compress(bytes((w * 3 + 1) * h)))]
    cases += [
        DecoderCase(
            "png zTXt of 100 MB zeros", png_file(w, h, chunks=[(b"zTXt", b"k\x00\x00" + bomb), *full])
        ),
        DecoderCase(
            "png iCCP of 100 MB zeros", png_file(w, h, chunks=[(b"iCCP", b"p\x00\x00" + bomb), *full])
        ),
        DecoderCase("empty bytes", b""),
        DecoderCase("bytearray png", bytearray(png.data), base=png.name, intact=True),
        DecoderCase("memoryview png", memoryview(png.data), base=png.name, intact=True),
        DecoderCase("path that does not exist", "/nonexistent/fuzz/image.png"),
        DecoderCase("path is a directory", tempfile.gettempdir()),
        DecoderCase("path with a NUL byte", "image\x00.png"),
    ]
    for mode, (width, height) in [
        ("rgb8", (9000, 9000)),
        ("rgba8", (9000, 9000)),
        ("grey16", (9000, 9000)),
        ("grey16", (4000, 3000)),
    ]:
        cases.append(DecoderCase(f"large valid png {mode} {width}x{height}", ("large", mode, width, height)))
    for base in bases:
        kind = base.name.split("-")[0]
        for value in (65_535, 0xFFFFFFFF, 0):
            data = set_dimensions(kind, base.data, value, value)
            if data is not None:
                cases.append(DecoderCase(f"{base.name} dimensions set to {value}", data))
    return cases


PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def png_shortfall(
    width: int, height: int, depth: int, colour: int, interlace: int, available: int
) -> str | None:
    """Why a PNG whose image data decompresses to ``available`` bytes must be refused because
    it lacks scanlines; None when the data suffice or the header is invalid anyway."""
    if colour not in PNG_CHANNELS or depth not in PNG_DEPTHS[colour] or interlace not in (0, 1):
        return None
    if width <= 0 or height <= 0 or width >= 2**31 or height >= 2**31:
        return None
    bits = depth * PNG_CHANNELS[colour]
    passes = ADAM7 if interlace else ((0, 0, 1, 1),)
    need = 0
    for x0, y0, dx, dy in passes:
        pw, ph = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if pw > 0 and ph > 0:
            need += ph * (1 + -(-pw * bits // 8))
    if available >= need:
        return None
    return f"image data holds {available} of the {need} bytes its {width}x{height} header needs"


def set_dimensions(kind: str, data: bytes, width: int, height: int) -> bytes | None:
    """``data`` with the declared picture size rewritten (clipped to the field's width);
    None where this format's header was not found."""
    b = bytearray(data)
    if kind == "png":
        b[16:24] = struct.pack(">II", width & 0xFFFFFFFF, height & 0xFFFFFFFF)
        return bytes(fix_png_crcs(b))
    if kind == "gif":
        b[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
        at = b.find(b"\x2c", 13)
        if at > 0 and at + 9 <= len(b):
            b[at + 5 : at + 9] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
        return bytes(b)
    if kind == "bmp":
        b[18:26] = struct.pack("<ii", _s32(width), _s32(height))
        return bytes(b)
    if kind == "jpeg":
        for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
            at = b.find(marker)
            if at > 0:
                b[at + 5 : at + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
                return bytes(b)
        return None
    if kind == "webp" and b[12:16] == b"VP8X":
        b[24:30] = ((width - 1) & 0xFFFFFF).to_bytes(3, "little") + ((height - 1) & 0xFFFFFF).to_bytes(
            3, "little"
        )
        return bytes(b)
    if kind == "tiff":
        return _tiff_set(b, {256: width, 257: height})
    return None


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - 2**32 if v >= 2**31 else v


def _tiff_set(b: bytearray, values: dict[int, int]) -> bytes | None:
    """Rewrite the first IFD's SHORT/LONG tags of ``values`` in a little-endian TIFF."""
    if b[:4] != b"II*\x00":
        return None
    ifd = struct.unpack("<I", b[4:8])[0]
    if ifd + 2 > len(b):
        return None
    n = struct.unpack("<H", b[ifd : ifd + 2])[0]
    for e in range(n):
        at = ifd + 2 + 12 * e
        if at + 12 > len(b):
            break
        tag, typ, count = struct.unpack("<HHI", b[at : at + 8])
        if tag in values and count == 1:
            if typ == 3:
                b[at + 8 : at + 12] = struct.pack("<HH", values[tag] & 0xFFFF, 0)
            elif typ == 4:
                b[at + 8 : at + 12] = struct.pack("<I", values[tag] & 0xFFFFFFFF)
    return bytes(b)


def _tiff_fields(b: bytes) -> list[int]:
    """Offsets of the value fields of the first IFD's entries in a little-endian TIFF."""
    if b[:4] != b"II*\x00":
        return []
    ifd = struct.unpack("<I", b[4:8])[0]
    if ifd + 2 > len(b):
        return []
    n = struct.unpack("<H", b[ifd : ifd + 2])[0]
    return [ifd + 2 + 12 * e + 8 for e in range(n) if ifd + 2 + 12 * e + 12 <= len(b)]


def mutate(data: bytes, rng: np.random.Generator, n_ops: int) -> tuple[bytearray, list[str]]:
    """``n_ops`` random byte-level edits, biased to the first 128 bytes where headers live and,
    mostly, sparing the first 12, whose magic numbers decide whether a decoder is tried at all."""
    b = bytearray(data)
    ops = []
    for _ in range(n_ops):
        if not b:
            b.extend(rng.integers(0, 256, 8, dtype=np.uint8).tobytes())
        first = min(12, len(b) - 1) if rng.random() < 0.85 else 0
        last = min(len(b), 128) if rng.random() < 0.5 else len(b)
        at = int(rng.integers(first, max(first + 1, last)))
        op = str(rng.choice(["flip", "byte", "word", "insert", "delete", "dup", "junk"]))
        if op == "flip":
            b[at] ^= 1 << int(rng.integers(0, 8))
        elif op == "byte":
            b[at] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF, int(rng.integers(0, 256))]))
        elif op == "word":
            width, order = int(rng.choice([2, 4])), str(rng.choice(["<", ">"]))
            value = int(rng.choice(INTERESTING_WORDS)) & ((1 << (8 * width)) - 1)
            b[at : at + width] = value.to_bytes(width, "little" if order == "<" else "big")
        elif op == "insert":
            b[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        elif op == "delete":
            del b[at : at + int(rng.integers(1, 64))]
        elif op == "dup":
            size = int(rng.integers(1, 256))
            b[at:at] = b[at : at + size]
        else:
            b.extend(rng.integers(0, 256, int(rng.integers(1, 256)), dtype=np.uint8).tobytes())
        ops.append(f"{op}@{at}")
    return b, ops


def field_mutate(base: Base, rng: np.random.Generator) -> tuple[bytes, str]:
    """A header field of ``base`` set to an interesting value: sizes, bit depth, colour type,
    component counts, LZW code size, BMP compression, or any TIFF tag value."""
    kind = base.name.split("-")[0]
    b = bytearray(base.data)
    value = int(rng.choice(INTERESTING_SIZES)) if rng.random() < 0.7 else int(rng.integers(0, 70_000))
    if rng.random() < 0.4:
        out = set_dimensions(kind, base.data, value, int(rng.choice(INTERESTING_SIZES)))
        if out is not None:
            return out, f"size {value}"
    if kind == "png":
        at = int(rng.integers(24, 29))
        b[at] = (
            int(rng.integers(0, 256)) if rng.random() < 0.5 else int(rng.choice([0, 1, 2, 3, 4, 6, 8, 16]))
        )
        return bytes(fix_png_crcs(b)), f"IHDR byte {at}={b[at]}"
    if kind == "tiff":
        fields = _tiff_fields(base.data)
        if fields:
            at = int(rng.choice(fields))
            b[at : at + 4] = struct.pack("<I", int(rng.choice(INTERESTING_WORDS)))
            return bytes(b), f"TIFF field @{at}"
    if kind == "bmp":
        at = int(rng.choice([10, 14, 26, 28, 30, 34, 46]))
        width = 2 if at in (26, 28) else 4
        b[at : at + width] = (int(rng.choice(INTERESTING_WORDS)) & ((1 << 8 * width) - 1)).to_bytes(
            width, "little"
        )
        return bytes(b), f"BMP field @{at}"
    if kind == "gif":
        at = b.find(b"\x2c", 13)
        if at > 0 and at + 11 <= len(b):
            b[at + 10] = int(rng.integers(0, 256)) if rng.random() < 0.5 else int(rng.integers(0, 13))
            return bytes(b), "GIF frame flags/LZW size"
    if kind == "jpeg":
        at = b.find(b"\xff\xc0")
        at = at if at > 0 else b.find(b"\xff\xc2")
        if at > 0:
            slot = int(rng.choice([4, 9]))
            b[at + slot] = int(rng.choice([0, 1, 2, 3, 4, 5, 12, 16, 255]))
            return bytes(b), f"JPEG SOF byte {slot}={b[at + slot]}"
    mutated, ops = mutate(base.data, rng, 1)
    return bytes(mutated), ",".join(ops)


def crafted_png(rng: np.random.Generator) -> tuple[bytes, str, str | None]:
    """A PNG built from chunks with correct CRCs and random fields: any size, bit depth, colour
    type and interlace; optional PLTE, tRNS and ancillary chunks; IDAT data compressed from
    zeros or noise of random length, sometimes split, sometimes missing; IEND optional.
    Returns the file, a description and why it must be refused (see :func:`png_shortfall`)."""
    w = int(rng.choice(INTERESTING_SIZES)) if rng.random() < 0.3 else int(rng.integers(1, 300))
    h = int(rng.choice(INTERESTING_SIZES)) if rng.random() < 0.3 else int(rng.integers(1, 300))
    depth = int(rng.choice([1, 2, 4, 8, 16, 0, 3, 32]))
    colour = int(rng.choice([0, 2, 3, 4, 6, 1, 5, 7]))
    interlace = int(rng.choice([0, 0, 1, 2]))
    chunks = []
    if rng.random() < 0.5:
        chunks.append(
            (
                b"PLTE",
                rng.integers(0, 256, int(rng.choice([0, 3, 48, 768, 771, 800])), dtype=np.uint8).tobytes(),
            )
        )
    if rng.random() < 0.3:
        chunks.append((b"tRNS", rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes()))
    if rng.random() < 0.2:
        kind = bytes(
            rng.choice([b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"iCCP", b"gAMA", b"pHYs", b"acTL", b"fcTL"])
        )
        chunks.append((kind, rng.integers(0, 256, int(rng.integers(0, 64)), dtype=np.uint8).tobytes()))
    raw_len = int(min(rng.integers(0, 200_000), max(1, w * h * 2)))
    if rng.random() < 0.3 and colour in PNG_CHANNELS and w < 100_000:
        row = 1 + -(-w * depth * PNG_CHANNELS[colour] // 8)
        raw_len = row * int(rng.integers(0, min(h, 200_000 // row) + 1))
    raw = bytes(raw_len) if rng.random() < 0.5 else rng.integers(0, 256, raw_len, dtype=np.uint8).tobytes()
    idat = zlib.compress(raw)
    if rng.random() < 0.15:
        idat = idat[: int(rng.integers(0, len(idat) + 1))]
    if rng.random() < 0.2:
        cut = int(rng.integers(0, len(idat) + 1))
        chunks += [(b"IDAT", idat[:cut]), (b"IDAT", idat[cut:])]
    elif rng.random() < 0.95:
        chunks.append((b"IDAT", idat))
    else:
        idat = b""
    data = png_file(w, h, depth, colour, interlace, chunks, end=rng.random() < 0.9)
    available = len(zlib.decompressobj().decompress(idat)) if idat else 0
    short = png_shortfall(w, h, depth, colour, interlace, available)
    return (
        data,
        f"IHDR {w}x{h} depth {depth} colour {colour} interlace {interlace}, {available} raw bytes",
        short,
    )


MAGICS = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF89a",
    b"GIF87a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"RIFF\x00\x00\x00\x00WEBPVP8L",
    b"RIFF\x00\x00\x00\x00WEBPVP8X",
]


def make_case(rng_seed: int, i: int, bases: list[Base], specials: list[DecoderCase]) -> DecoderCase:
    """Decoder case ``i``: a special case, else a random one drawn from its own generator."""
    if i < len(specials):
        return dataclasses.replace(specials[i], desc=f"case {i}: {specials[i].desc}")
    rng = np.random.default_rng([rng_seed, i])
    base = bases[int(rng.integers(0, len(bases)))]
    kind = str(rng.choice(CASE_KINDS))
    if rng.random() < 0.001:
        kind = "large"
    case = DecoderCase("", b"")
    if kind == "mutate":
        data, ops = mutate(base.data, rng, int(rng.integers(1, 9)))
        if base.name.startswith("png") and rng.random() < 0.5:
            data = fix_png_crcs(data)
            ops.append("crc-fixed")
        case.desc, case.value = f"{base.name} mutated {','.join(ops)}", bytes(data)
    elif kind == "field":
        case.value, what = field_mutate(base, rng)
        case.desc = f"{base.name} field {what}"
    elif kind == "truncate":
        cut = int(rng.integers(0, len(base.data)))
        case.desc, case.value, case.base = f"{base.name} truncated to {cut}", base.data[:cut], base.name
    elif kind == "header":
        cut = int(rng.integers(1, min(len(base.data), 64) + 1))
        case.desc, case.value = f"{base.name} header only ({cut} bytes)", base.data[:cut]
    elif kind == "random":
        magic = MAGICS[int(rng.integers(0, len(MAGICS)))] if rng.random() < 0.7 else b""
        noise = rng.integers(0, 256, int(rng.integers(0, 4096)), dtype=np.uint8).tobytes()
        case.desc, case.value = f"random bytes after {magic!r}", magic + noise
    elif kind == "splice":
        other = bases[int(rng.integers(0, len(bases)))]
        cut = int(rng.integers(0, len(base.data)))
        case.desc, case.value = (
            f"{base.name}[:{cut}] + {other.name}[{cut}:]",
            base.data[:cut] + other.data[cut:],
        )
    elif kind == "png":
        case.value, desc, case.must_refuse = crafted_png(rng)
        case.desc = f"crafted png {desc}"
    else:
        mode = str(rng.choice(list(LARGE_MODES)))
        width = int(rng.integers(3000, 12_000))
        height = int(DEFAULT_MAX_PIXELS * rng.uniform(0.3, 1.0)) // width
        case.desc, case.value = f"large valid png {mode} {width}x{height}", ("large", mode, width, height)
    if kind != "large" and rng.random() < 0.15:
        case.max_pixels = int(rng.choice([0, -1, 1, 64, 391, 4096, 10**6, 2**62]))
    case.desc = f"case {i}: {case.desc}"
    return case


CASE_KINDS = ["mutate"] * 10 + ["field"] * 3 + ["truncate"] * 2 + ["header", "random", "splice"] + ["png"] * 2


def materialize(value: Any, rng: np.random.Generator, workdir: Path, i: int) -> Any:
    """The argument handed to decode_image: large pictures are built here, and some inputs go
    as bytearray or memoryview, or through a file given by str or Path."""
    if isinstance(value, tuple) and value and value[0] == "large":
        return large_png(*value[1:])
    if not isinstance(value, bytes):
        return value
    draw = rng.random()
    if draw < 0.06:
        path = workdir / f"case{i}.img"
        path.write_bytes(value)
        return str(path) if draw < 0.03 else path
    if draw < 0.09:
        return bytearray(value)
    if draw < 0.11:
        return memoryview(value)
    return value


def refusal_kind(reason: str) -> str:
    if reason.startswith("cannot decode:"):
        return "cannot decode: " + reason.split(":")[1].strip()
    return reason.split("(")[0].split(";")[0].strip()


def check_decoded(out: Any, max_pixels: int, base: Base | None) -> None:
    """Invariants of every successful decode, and the pixels of an unmutated file."""
    if not isinstance(out, DecodedImage) or out.image.mode != "RGB":
        raise WrongAnswer("decoder returned something other than an RGB DecodedImage")
    iw, ih = out.image.size
    if not (0 < iw <= out.width and 0 < ih <= out.height) or out.width * out.height > max_pixels:
        raise WrongAnswer(
            "decoded size is inconsistent or above max_pixels",
            f"{iw}x{ih} of {out.width}x{out.height}, limit {max_pixels}",
        )
    if len(out.image.tobytes()) != iw * ih * 3:
        raise WrongAnswer("decoded image holds the wrong number of bytes")
    if base is None:
        return
    if (out.width, out.height) != base.size:
        raise WrongAnswer(f"{base.name}: displayed size {out.width}x{out.height}, expected {base.size}")
    if base.expected is None:
        return
    got = np.asarray(out.image, dtype=np.int16)
    if got.shape != base.expected.shape:
        raise WrongAnswer(f"{base.name}: pixel array {got.shape}, expected {base.expected.shape}")
    diff = np.abs(got - base.expected.astype(np.int16))
    if (diff.mean() > 12) if base.lossy else (diff.max() > 1):
        raise WrongAnswer(f"{base.name}: pixels differ (max {diff.max()}, mean {diff.mean():.2f})")


def run_decoder_case(case: DecoderCase, arg: Any, bases_by_name: dict) -> tuple[str, str, float, str]:
    """Decode one input; ``(status, label, seconds, detail)`` with status ok, refused or crash."""
    base = bases_by_name.get(case.base) if case.base else None
    t0 = time.perf_counter()
    try:
        out = decode_image(arg, max_pixels=case.max_pixels)
    except UnreadableImage as e:
        dt = time.perf_counter() - t0
        if case.intact and base.size[0] * base.size[1] <= case.max_pixels:
            return "crash", f"wrong answer: valid {base.name} refused", dt, e.reason
        return "refused", refusal_kind(e.reason), dt, ""
    except Exception as e:
        return "crash", signature(e), time.perf_counter() - t0, f"{type(e).__name__}: {e} | {engine_trace(e)}"
    dt = time.perf_counter() - t0
    try:
        if case.must_refuse:
            raise WrongAnswer("decoded an input that must be refused", case.must_refuse)
        check_decoded(out, case.max_pixels, base)
    except WrongAnswer as e:
        return "crash", signature(e), dt, f"{e} (decoded {out.width}x{out.height})"
    label = "ok" if base is None else "ok (pixels checked)"
    return "ok", label, dt, f"{out.width}x{out.height}"


def decoder_worker(conn, rng_seed: int, start: int, stop: int, slow_s: float, save_dir: str | None) -> None:
    """Worker process: run decoder cases ``start..stop-1`` and send one message per case.
    libtiff and libjpeg print a line to stderr for most broken files; those go to /dev/null."""
    warnings.simplefilter("ignore")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    bases = make_bases()
    by_name = {b.name: b for b in bases}
    specials = special_cases(bases)
    with tempfile.TemporaryDirectory(prefix="fuzz-decode-") as tmp:
        for i in range(start, stop):
            case = make_case(rng_seed, i, bases, specials)
            arg = materialize(case.value, np.random.default_rng([rng_seed, i, 1]), Path(tmp), i)
            status, label, dt, detail = run_decoder_case(case, arg, by_name)
            if save_dir and (status == "crash" or dt > slow_s) and isinstance(arg, (bytes, bytearray)):
                (Path(save_dir) / f"decoder-case-{i}.bin").write_bytes(bytes(arg))
            conn.send(
                (
                    i,
                    status,
                    label,
                    dt,
                    f"{case.desc} [{_arg_kind(arg)}, max_pixels={case.max_pixels}]",
                    detail,
                )
            )
    conn.close()


def _arg_kind(arg: Any) -> str:
    size = f" {len(arg)} bytes" if isinstance(arg, (bytes, bytearray, memoryview)) else ""
    return type(arg).__name__ + size


def run_decoder(
    n: int, rng_seed: int, slow_s: float, hang_s: float, save_dir: str | None, slow_per_mp: float = 0.1
) -> Tally:
    """Cases 0..n-1 in a worker process; a case silent for ``hang_s`` is a hang, and a worker
    that dies (a segfault in a codec) a crash; either way a fresh worker goes on after it."""
    tally = Tally()
    ctx = multiprocessing.get_context("spawn")
    bases = make_bases()
    specials = special_cases(bases)
    i = 0
    while i < n:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=decoder_worker, args=(child, rng_seed, i, n, slow_s, save_dir), daemon=True)
        proc.start()
        child.close()
        starting = True
        while i < n:
            # The first answer of a worker also waits for its imports and its base files.
            if not parent.poll(hang_s + (120 if starting else 0)):
                proc.kill()
                _lost_case(tally, i, f"hang: no answer within {hang_s:g} s", rng_seed, bases, specials)
                i += 1
                break
            try:
                j, status, label, dt, desc, detail = parent.recv()
            except EOFError:
                proc.join()
                _lost_case(tally, i, f"worker died (exit code {proc.exitcode})", rng_seed, bases, specials)
                i += 1
                break
            tally.cases += 1
            tally.timed(dt, desc)
            if "large valid png" in desc:
                tally.timings[desc.split(": ", 1)[1].split(" [")[0]] = round(dt, 2)
            if status == "crash":
                tally.crash(label, desc, detail)
            else:
                tally.outcomes[label] += 1
                if label.startswith("ok (pixels"):
                    tally.checks["pixels_compared"] += 1
                limit = slow_s + _megapixels(detail) * slow_per_mp
                if dt > limit:
                    tally.crash(
                        f"slow: over {slow_s:g} s + {slow_per_mp:g} s per decoded megapixel",
                        f"{desc} took {dt:.2f} s, limit {limit:.2f} s ({label} {detail})",
                        f"took {dt:.2f} s",
                    )
            i, starting = j + 1, False
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
        parent.close()
    return tally


def _megapixels(detail: str) -> float:
    """Megapixels of a decoded picture from its ``WxH`` detail; 0 for a refusal."""
    m = re.fullmatch(r"(\d+)x(\d+)", detail)
    return int(m[1]) * int(m[2]) / 1e6 if m else 0.0


def _lost_case(tally: Tally, i: int, sig: str, rng_seed: int, bases: list, specials: list) -> None:
    case = make_case(rng_seed, i, bases, specials)
    tally.cases += 1
    tally.crash(sig, f"{case.desc} [max_pixels={case.max_pixels}]", sig)


# -- driver --------------------------------------------------------------------------------------


def fuzz_hypothesis_surface(
    view: CatalogView,
    strategy: st.SearchStrategy,
    checker: Callable,
    n: int,
    rng_seed: int,
    slow_s: float,
    shrink_s: float,
) -> Tally:
    """Run ``n`` Hypothesis cases through ``checker``, then shrink the shortest sample of each
    crash kind (the shrinking runs count nothing)."""
    tally, scratch = Tally(), Tally()
    t0 = time.perf_counter()
    run_hypothesis(
        strategy, lambda case: attempt(tally, lambda c: checker(view, tally, c), case, slow_s), n, rng_seed
    )
    tally.seconds = time.perf_counter() - t0
    if shrink_s > 0:
        for sig, entry in tally.crashes.items():
            if not sig.startswith("slow") and "_case" in entry:
                entry["minimized"] = short_repr(
                    shrink(
                        entry["_case"],
                        lambda case: attempt(scratch, lambda c: checker(view, scratch, c), case, math.inf),
                        shrink_s,
                    )
                )
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=10_000, help="cases per surface")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--surfaces",
        nargs="+",
        choices=["boxes", "refine", "decoder"],
        default=["boxes", "refine", "decoder"],
    )
    parser.add_argument("--slow", type=float, default=2.0, help="seconds after which a case counts as a hang")
    parser.add_argument(
        "--slow-per-mp",
        type=float,
        default=0.1,
        help="seconds the decoder may add per megapixel of a picture it decodes",
    )
    parser.add_argument(
        "--hang-timeout",
        type=float,
        default=60.0,
        help="seconds after which a decoder case is stopped (its worker killed)",
    )
    parser.add_argument(
        "--shrink-seconds",
        type=float,
        default=15.0,
        help="time to shrink one input per crash kind (0: keep the samples only)",
    )
    parser.add_argument("--save-dir", help="write the bytes of crashing decoder inputs here")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    if args.save_dir:
        Path(args.save_dir).mkdir(parents=True, exist_ok=True)
    report: dict = {
        "seed": args.seed,
        "cases_per_surface": args.cases,
        "slow_limit_s": args.slow,
        "slow_s_per_decoded_megapixel": args.slow_per_mp,
        "surfaces": {},
    }
    with tempfile.TemporaryDirectory(prefix="fuzz-catalogs-") as tmp:
        boxes_path, refine_path = build_catalogs(Path(tmp), args.seed)
        for name in args.surfaces:
            if name == "decoder":
                t0 = time.perf_counter()
                tally = run_decoder(
                    args.cases, args.seed, args.slow, args.hang_timeout, args.save_dir, args.slow_per_mp
                )
                tally.seconds = time.perf_counter() - t0
            else:
                view = CatalogView.open(boxes_path if name == "boxes" else refine_path)
                try:
                    strategy, checker = (
                        (box_cases(), check_box_case)
                        if name == "boxes"
                        else (refine_cases(), check_refine_case)
                    )
                    tally = fuzz_hypothesis_surface(
                        view, strategy, checker, args.cases, args.seed, args.slow, args.shrink_seconds
                    )
                finally:
                    view.cat.close()
            report["surfaces"][name] = tally.report()
            print(
                f"{name}: {tally.cases} cases, {sum(c['count'] for c in tally.crashes.values())} crashes, "
                f"{tally.seconds:.1f} s",
                file=sys.stderr,
            )
    report["crashes"] = sum(s["crashes"] for s in report["surfaces"].values())
    print(json.dumps(report, indent=2, default=str))
    return 1 if report["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
