"""Saved concepts: a refine result kept in the catalog under a name (:class:`Concept`).

A concept holds the fitted boxes with their vote threshold and the centre that ranks ties, the
labels and options it was trained with, and the codes it was fitted on (``codes_space``). It
lives in the file twice: a row of the ``concepts`` table, and a view ``concept_<name>``
(``id, votes, rank``, best first) that any DuckDB client can query without Python and that
classifies images as they arrive. The table macro ``concept(name)`` reads any of the views by
name, and ``concept_new(name)`` the rows added since the concept was last opened.

When the catalog's codes are recomputed by another head or quantizer, the boxes no longer fit
them: the concept is *stale*. Its view then raises an error naming the fix, the engine refuses
it (:class:`~engine.errors.StaleConcept`), and :func:`retrain` fits it again from its labels.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .boxes import N_DIMS, BoxSet, distance_sql
from .errors import CatalogError, InvalidArgument, StaleConcept
from .store import Store
from .store.database import Transaction
from .store.sqlnames import literal

NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")
VIEW_PREFIX = "concept_"
EXPORT_FORMAT = "clip-branches-concept"
EXPORT_VERSION = 1
# The request keys a concept keeps, to be trained again as it was.
REQUEST_KEYS = (
    "positives",
    "negatives",
    "model",
    "sampled_negatives",
    "negative_weight",
    "filter_sampled",
    "guide",
    "random_state",
)
MAX_EXPORT_BYTES = 64 << 20  # a concept file is boxes and labels: far below this


@dataclass
class Concept:
    """A saved concept. ``stale``: the catalog's codes are no longer those it was fitted on."""

    name: str
    boxes: BoxSet
    min_votes: int
    center: list[int]
    request: dict
    codes_space: str
    created_at: datetime | None = None
    updated_at: datetime | None = None
    seen_id: int | None = None
    stale: bool = False
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def view(self) -> str:
        """The name of its view in the catalog file."""
        return VIEW_PREFIX + self.name

    def definition(self) -> dict:
        return {
            "boxes": self.boxes.to_json(),
            "min_votes": self.min_votes,
            "center": list(self.center),
            "request": self.request,
            "note": self.note,
            **self.extra,
        }

    def to_json(self) -> dict:
        """What ``concept show --json`` prints and an export holds."""
        return {
            "name": self.name,
            "view": self.view,
            "stale": self.stale,
            "codes_space": self.codes_space,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "seen_id": self.seen_id,
            "boxes": len(self.boxes),
            "members": int(len(np.unique(self.boxes.members))),
            **self.definition(),
        }

    def select_sql(self, source: str = "codes") -> str:
        """The SELECT of its view: ``(id, votes, rank)`` over ``source``, best first: votes,
        then squared distance to the centre, then block position, as the engine ranks them."""
        uniq = np.unique(self.boxes.members)
        if len(uniq) <= 1:
            votes = f"CAST(({self.boxes.predicate()}) AS INTEGER)"
        else:
            votes = "\n    + ".join(f"CAST(({self.boxes.predicate(int(m))}) AS INTEGER)" for m in uniq)
        dist = distance_sql(self.center, N_DIMS)
        return (
            "SELECT id, votes, row_number() OVER (ORDER BY votes DESC, dist, pos) AS rank FROM (\n"
            f"  SELECT id, pos,\n    {votes}\n  AS votes,\n  {dist} AS dist\n"
            f"  FROM {source}\n  WHERE {_guard(self)}\n) AS voted\n"
            f"WHERE votes >= {max(1, int(self.min_votes))}\nORDER BY rank"
        )


def _guard(concept: Concept) -> str:
    """A condition that is true while the codes are those the concept was fitted on, and raises
    an error naming the fix once they are not (evaluated once per query, not per row)."""
    message = (
        f"concept {concept.name!r} is stale: the catalog's codes were computed by another head or "
        f"quantizer since it was saved; retrain it with `clip-branches concept retrain CATALOG {concept.name}`"
    )
    return (
        "(SELECT CASE WHEN max(value) IS DISTINCT FROM "
        f"{literal(json.dumps(concept.codes_space))} THEN error({literal(message)}) ELSE TRUE END "
        "FROM settings WHERE key = 'codes_space')"
    )


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat(timespec="seconds")


# -- names and spaces ------------------------------------------------------------------------
def check_name(name: Any) -> str:
    """A concept name: lower-case letters, digits and underscores, starting with a letter (so
    its view needs no quoting in any SQL client)."""
    if not isinstance(name, str):
        raise InvalidArgument(f"a concept name must be text, got {type(name).__name__}")
    name = name.strip().lower()
    if not NAME.fullmatch(name):
        raise InvalidArgument(
            f"{name[:60]!r} is not a usable concept name: use 1-48 lower-case letters, digits and "
            "underscores, starting with a letter (e.g. red_sneakers)"
        )
    return name


def codes_space(store: Store) -> str | None:
    """What the catalog's codes were computed by (the ``codes_space`` setting), or None when
    no build has recorded it yet."""
    return store.setting("codes_space")


def _establish_space(store: Store) -> str:
    """The current codes space, recorded now when no build has: the stored head's when the
    index was built from it, else a fresh name for codes of unknown origin."""
    space = codes_space(store)
    if space is not None:
        return space
    from .store.tables import head_space

    head, index = store.setting("head"), store.setting("index") or {}
    if head and index.get("head_sha256") == head.get("sha256"):
        space = head_space(head["sha256"], store.setting("quantizer"))
    else:
        space = f"codes:{uuid.uuid4().hex}"
    store.set_settings({"codes_space": space})
    return space


# -- reading ---------------------------------------------------------------------------------
_COLUMNS = "name, definition, codes_space, created_at, updated_at, seen_id"


def _from_row(row: tuple, space: str | None) -> Concept:
    name, definition, stored_space, created, updated, seen = row
    d = json.loads(definition)
    known = {"boxes", "min_votes", "center", "request", "note"}
    return Concept(
        name=name,
        boxes=BoxSet.from_json(d["boxes"]),
        min_votes=int(d["min_votes"]),
        center=[int(v) for v in d["center"]],
        request=dict(d.get("request") or {}),
        codes_space=stored_space,
        created_at=created,
        updated_at=updated,
        seen_id=seen,
        stale=stored_space != space,
        note=str(d.get("note") or ""),
        extra={k: v for k, v in d.items() if k not in known},
    )


def names(store: Store) -> list[str]:
    return [r[0] for r in store.read("SELECT name FROM concepts ORDER BY name")]


def list_all(store: Store) -> list[Concept]:
    """Every saved concept, by name."""
    space = codes_space(store)
    return [_from_row(r, space) for r in store.read(f"SELECT {_COLUMNS} FROM concepts ORDER BY name")]


def get(store: Store, name: str) -> Concept:
    """The concept ``name``; :class:`InvalidArgument` naming the saved ones when there is none."""
    name = check_name(name)
    rows = store.read(f"SELECT {_COLUMNS} FROM concepts WHERE name = ?", [name])
    if not rows:
        saved = names(store)
        have = f"saved: {', '.join(saved)}" if saved else "none is saved yet"
        raise InvalidArgument(f"no concept named {name!r} ({have})")
    return _from_row(rows[0], codes_space(store))


def check_fresh(concept: Concept) -> None:
    if concept.stale:
        raise StaleConcept(
            f"concept {concept.name!r} was fitted on codes this catalog no longer holds (another head or "
            f"quantizer computed them); retrain it from its labels with `clip-branches concept retrain "
            f"CATALOG {concept.name}` or Catalog.concepts.retrain({concept.name!r})"
        )


# -- writing ---------------------------------------------------------------------------------
def from_result(name: str, result, note: str = "") -> Concept:
    """The concept a refine ``result`` (of ``Catalog.refine``) defines, not yet saved."""
    model = getattr(result, "model", None)
    boxes = getattr(model, "boxes_", None)
    request = getattr(result, "request", None) or {}
    center = getattr(result, "center", None)
    if boxes is None or center is None or "positives" not in request:
        raise InvalidArgument(
            "only a fine-tune (refine) result can be saved as a concept: a search has no boxes"
        )
    min_votes = int(result.stats.get("min_votes", getattr(model, "min_votes_", 1)))
    return Concept(
        name=check_name(name),
        boxes=boxes,
        min_votes=min_votes,
        center=[int(v) for v in np.asarray(center).tolist()],
        request={k: request.get(k) for k in REQUEST_KEYS},
        codes_space="",
        note=str(note or "")[:500],
    )


def save(store: Store, concept: Concept, *, replace: bool = False, space: str | None = None) -> Concept:
    """Store ``concept`` and (re)create its view and the macros, in one transaction; returns it
    as saved. ``space``: the codes it was fitted on (default: the catalog's current ones).
    An existing concept of that name is replaced only with ``replace``."""
    store.check_writable()
    with store.write() as tx:
        exists = tx.value("SELECT count(*) FROM concepts WHERE name = ?", [concept.name]) > 0
        if exists and not replace:
            raise InvalidArgument(
                f"a concept named {concept.name!r} exists; choose another name, or replace it "
                "(--replace, replace=True)"
            )
        concept.codes_space = space or _establish_space(store)
        seen = _max_id(tx)
        tx.execute("DELETE FROM concepts WHERE name = ?", [concept.name])
        tx.execute(
            "INSERT INTO concepts (name, definition, codes_space, seen_id) VALUES (?, ?, ?, ?)",
            [concept.name, json.dumps(concept.definition()), concept.codes_space, seen],
        )
        _create_view(tx, concept)
        _create_macros(tx, _all_names(tx))
    return get(store, concept.name)


def delete(store: Store, name: str) -> None:
    store.check_writable()
    concept = get(store, name)
    with store.write() as tx:
        tx.execute("DELETE FROM concepts WHERE name = ?", [concept.name])
        tx.execute(f"DROP VIEW IF EXISTS {concept.view}")
        _create_macros(tx, _all_names(tx))


def rename(store: Store, name: str, new_name: str) -> Concept:
    store.check_writable()
    concept = get(store, name)
    new_name = check_name(new_name)
    if new_name == concept.name:
        return concept
    with store.write() as tx:
        if tx.value("SELECT count(*) FROM concepts WHERE name = ?", [new_name]):
            raise InvalidArgument(f"a concept named {new_name!r} exists; choose another name")
        tx.execute(
            "UPDATE concepts SET name = ?, updated_at = current_timestamp WHERE name = ?",
            [new_name, concept.name],
        )
        tx.execute(f"DROP VIEW IF EXISTS {concept.view}")
        concept.name = new_name
        _create_view(tx, concept)
        _create_macros(tx, _all_names(tx))
    return get(store, new_name)


def mark_seen(store: Store, name: str) -> int:
    """Record that ``name`` was opened now: its rows up to the largest id are no longer new.
    Returns the id recorded."""
    store.check_writable()
    concept = get(store, name)
    with store.write() as tx:
        seen = _max_id(tx)
        tx.execute("UPDATE concepts SET seen_id = ? WHERE name = ?", [seen, concept.name])
    return seen


def retrain(store: Store, name: str, refine: Callable[..., Any]) -> Concept:
    """Fit ``name`` again from its stored labels and options with ``refine`` (``Catalog.refine``)
    on the catalog's current codes; labelled images removed since are left out."""
    concept = get(store, name)
    req = dict(concept.request)
    known = {
        int(i)
        for (i,) in store.read(
            "SELECT id FROM codes WHERE id IN (SELECT unnest(?))",
            [[*req.get("positives", []), *req.get("negatives", [])]],
        )
    }
    pos = [i for i in req.get("positives", []) if i in known]
    neg = [i for i in req.get("negatives", []) if i in known]
    if not pos:
        raise InvalidArgument(
            f"concept {concept.name!r} cannot be trained again: none of its {len(req.get('positives', []))} "
            "positive images is in the catalog any more"
        )
    options = {k: req[k] for k in REQUEST_KEYS[2:] if req.get(k) is not None}
    result = refine(pos, neg, **options)
    fresh = from_result(concept.name, result, concept.note)
    return save(store, fresh, replace=True)


def _max_id(tx: Transaction) -> int:
    return int(tx.value("SELECT coalesce(max(id), -1) FROM codes"))


def _all_names(tx: Transaction) -> list[str]:
    return [r[0] for r in tx.execute("SELECT name FROM concepts ORDER BY name")]


def _create_view(tx: Transaction, concept: Concept) -> None:
    tx.execute(f"CREATE OR REPLACE VIEW {concept.view} AS\n{concept.select_sql()}")


def _create_macros(tx: Transaction, saved: list[str]) -> None:
    """``concept(name)``: the rows of the named concept's view, best first; an error naming the
    saved ones for any other name. ``concept_new(name)``: those added since it was last opened."""
    listed = ", ".join(literal(n) for n in saved)
    missing = f"concept_name NOT IN ({listed}) OR concept_name IS NULL" if saved else "TRUE"
    unknown = (
        "SELECT CAST(error('no saved concept named ' || concept_name || '; saved: ' || "
        f"{literal(', '.join(saved) or 'none')}) AS BIGINT) AS id, NULL::INTEGER AS votes, "
        f"NULL::BIGINT AS rank WHERE {missing}"
    )
    branches = [unknown] + [
        f"SELECT id, votes, rank FROM {VIEW_PREFIX}{n} WHERE concept_name = {literal(n)}" for n in saved
    ]
    body = "\n  UNION ALL ".join(branches)
    tx.execute(
        f"CREATE OR REPLACE MACRO concept(concept_name) AS TABLE\nSELECT * FROM (\n  {body}\n) ORDER BY rank"
    )
    tx.execute(
        "CREATE OR REPLACE MACRO concept_new(concept_name) AS TABLE\n"
        "SELECT * FROM concept(concept_name) WHERE id > "
        "(SELECT coalesce(max(seen_id), -1) FROM concepts WHERE name = concept_name) ORDER BY rank"
    )


# -- files -----------------------------------------------------------------------------------
def export(concept: Concept, path: str | Path | None = None) -> dict:
    """The concept as a JSON document (written to ``path`` when given)."""
    doc = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, **concept.to_json()}
    if path is not None:
        Path(path).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return doc


def read_export(data: str | bytes | Mapping, name: str | None = None) -> tuple[Concept, str]:
    """A concept and the codes space it was fitted on, from an export document (its text or
    parsed JSON); ``name`` overrides the one it holds. :class:`InvalidArgument` for anything else."""
    if isinstance(data, (str, bytes)):
        if len(data) > MAX_EXPORT_BYTES:
            raise InvalidArgument(f"a concept file holds at most {MAX_EXPORT_BYTES >> 20} MB")
        try:
            data = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as e:
            raise InvalidArgument(f"the concept file is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(data, Mapping) or data.get("format") != EXPORT_FORMAT:
        raise InvalidArgument(f"not a concept file: it must be a JSON object with format {EXPORT_FORMAT!r}")
    if data.get("version") != EXPORT_VERSION:
        raise InvalidArgument(
            f"concept file version {data.get('version')!r}; this clip-branches reads {EXPORT_VERSION}"
        )
    try:
        center = [int(v) for v in data["center"]]
        if len(center) != N_DIMS or not all(0 <= v <= 255 for v in center):
            raise ValueError(f"center must be {N_DIMS} integers in 0..255")
        request = data["request"]
        if not isinstance(request, Mapping) or not isinstance(request.get("positives"), list):
            raise ValueError("request must be an object with a positives list")
        concept = Concept(
            name=check_name(name if name is not None else data["name"]),
            boxes=BoxSet.from_json(data["boxes"]),
            min_votes=int(data["min_votes"]),
            center=center,
            request={k: request.get(k) for k in REQUEST_KEYS},
            codes_space="",
            note=str(data.get("note") or "")[:500],
        )
        space = str(data["codes_space"])
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CatalogError):
            raise
        raise InvalidArgument(f"the concept file is incomplete or malformed: {str(e)[:200]}") from None
    return concept, space


# -- the catalog's door ----------------------------------------------------------------------
class Concepts:
    """A catalog's saved concepts (``Catalog.concepts``): save, read, apply, train again."""

    def __init__(self, cat):
        self._cat = cat

    def save(self, name: str, result, *, replace: bool = False, note: str = "") -> Concept:
        """Keep the refine ``result`` as concept ``name`` (its view: ``concept_<name>``)."""
        return save(self._cat.store, from_result(name, result, note), replace=replace)

    def get(self, name: str) -> Concept:
        return get(self._cat.store, name)

    def list(self) -> list[Concept]:
        return list_all(self._cat.store)

    def delete(self, name: str) -> None:
        delete(self._cat.store, name)

    def rename(self, name: str, new_name: str) -> Concept:
        return rename(self._cat.store, name, new_name)

    def retrain(self, name: str) -> Concept:
        """Fit ``name`` again from its stored labels on the current codes (after a new head)."""
        return retrain(self._cat.store, name, self._cat.refine)

    def mark_seen(self, name: str) -> int:
        return mark_seen(self._cat.store, name)

    def result(self, name: str):
        """The catalog's images in concept ``name``, ranked as its view ranks them (a
        :class:`~engine.learn.refine.Result` with votes as scores); StaleConcept when stale."""
        import time

        from .index import query
        from .learn.refine import Result

        concept = self.get(name)
        check_fresh(concept)
        t0 = time.perf_counter()
        index = self._cat.snapshot().index
        center = np.asarray(concept.center, np.int64)
        sel = query.select(index, concept.boxes, concept.min_votes, center=center)
        stats = {
            "concept": concept.name,
            "rows": index.n_rows,
            "results": int(len(sel.ids)),
            "new": int(np.count_nonzero(sel.ids > (concept.seen_id if concept.seen_id is not None else -1))),
            "time_total_ms": (time.perf_counter() - t0) * 1e3,
        }
        sql = f"SELECT id, votes FROM {concept.view} ORDER BY rank"
        return Result(sel.ids, sel.votes.astype(np.int64), sql, stats, center=center, request=concept.request)

    def new_ids(self, name: str) -> np.ndarray:
        """Ids in concept ``name`` added since it was last opened (:meth:`mark_seen`), best first."""
        concept = self.get(name)
        ids = self.result(name).ids
        return ids[ids > (concept.seen_id if concept.seen_id is not None else -1)]

    def export(self, name: str, path: str | Path | None = None) -> dict:
        return export(self.get(name), path)

    def import_file(
        self, source: str | Path | bytes | Mapping, *, name: str | None = None, replace: bool = False
    ) -> Concept:
        """Save the concept of an export (a path, its bytes or parsed JSON). It keeps the codes
        space it was fitted on: stale here unless this catalog's codes are those."""
        if isinstance(source, (str, Path)) and not str(source).lstrip().startswith("{"):
            path = Path(source)
            if not path.is_file():
                raise InvalidArgument(f"no concept file at {path}")
            if path.stat().st_size > MAX_EXPORT_BYTES:
                raise InvalidArgument(
                    f"{path} is larger than a concept file can be ({MAX_EXPORT_BYTES >> 20} MB)"
                )
            source = path.read_bytes()
        concept, space = read_export(source, name)
        return save(self._cat.store, concept, replace=replace, space=space)
