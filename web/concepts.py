"""Saved concepts in the web app: the Concepts panel, saving a fine-tune as a concept, opening,
renaming, deleting and retraining one, and the JSON twins under ``/api/concepts``.

The server holds the catalog read-only: every change goes through the writer thread
(:mod:`web.live`), and the panel is read again once the catalog is open read-only again. When
the user last opened a concept lives in the browser (localStorage: the largest image id shown),
which sends it as ``seen``; the server counts the concept's ids above it as new.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Annotated
from urllib.parse import quote

from litestar import Request, Response, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, JSONBody, Parameter
from litestar.plugins.htmx import HTMXRequest, HTMXTemplate
from litestar.response import Redirect, Template
from msgspec import Meta, Struct

import engine
from engine.concepts import NAME, Concept, check_name
from engine.errors import InvalidArgument, ServerBusy

from .bodies import FORM, JSON_OR_FORM, BodyRequest, CatalogName, ResultResponse
from .pages import result_context
from .state import App, CatalogParam, Served, state_of

NOTE_CHARS = 500  # what engine.concepts keeps of a note; more is refused here, not cut
NAME_CHARS = 100  # characters of a name read at all; the engine takes 48 and says so
SEEN_CHARS = 8_000  # about 150 concepts of long names and 19-digit ids
SEEN_ENTRIES = 500
BODY_BYTES = 64 << 10  # a name, a note, a token and ``seen``: far below this
WRITE_WAIT_S = 60.0  # how long a request waits for the writer to have the catalog and write
INT64 = (-(2**63), 2**63 - 1)
_SEEN_ENTRY = re.compile(rf"({NAME.pattern}):(-?[0-9]{{1,19}})")

SEEN_HELP = (
    f"when the user last opened each concept: comma-separated name:id pairs, the id being the largest image "
    f"id shown then (at most {SEEN_CHARS} characters; malformed pairs are ignored)"
)
SeenParam = Annotated[str, Parameter(max_length=SEEN_CHARS, description=SEEN_HELP)]
SeenField = Annotated[str, Meta(max_length=SEEN_CHARS, description=SEEN_HELP)]
NameField = Annotated[
    str,
    Meta(
        max_length=NAME_CHARS,
        description="a concept name: 1-48 lower-case letters, digits and underscores, starting with a letter",
    ),
]


def parse_seen(text: str) -> dict[str, int]:
    """``{name: largest id seen}`` of a ``seen`` text (``name1:123,name2:456``): pairs that are not a
    concept name and a 64-bit integer are left out, and at most :data:`SEEN_ENTRIES` are read."""
    seen: dict[str, int] = {}
    for part in text[:SEEN_CHARS].split(",", SEEN_ENTRIES)[:SEEN_ENTRIES]:
        m = _SEEN_ENTRY.fullmatch(part.strip())
        if m and INT64[0] <= int(m[2]) <= INT64[1]:
            seen[m[1]] = int(m[2])
    return seen


# -- bodies ----------------------------------------------------------------------------------
class SaveConceptRequest(Struct, forbid_unknown_fields=True):
    """Keep a fine-tune's result (by its token) as a named concept."""

    token: Annotated[
        str, Meta(max_length=100, description="the `result` token of a fine-tune (/refine or /api/refine)")
    ]
    name: NameField
    note: Annotated[
        str, Meta(max_length=NOTE_CHARS, description=f"a note of at most {NOTE_CHARS} characters")
    ] = ""
    replace: Annotated[
        bool, Meta(description="true or false: whether to replace a concept of the same name")
    ] = False
    catalog: CatalogName = None
    seen: SeenField = ""


class RenameConceptRequest(Struct, forbid_unknown_fields=True):
    name: NameField
    new_name: NameField
    catalog: CatalogName = None
    seen: SeenField = ""


class ConceptNameRequest(Struct, forbid_unknown_fields=True):
    name: NameField
    catalog: CatalogName = None
    seen: SeenField = ""


class ConceptInfo(Struct):
    """A saved concept as the panel lists it. ``images``, ``new`` and ``max_id`` are null for a
    stale concept (retrain it); ``new`` is null too when ``seen`` did not name the concept."""

    name: str
    view: Annotated[str, Meta(description="its view in the catalog file: (id, votes, rank), best first")]
    note: str
    stale: bool
    images: int | None
    new: Annotated[int | None, Meta(description="its images with an id above the one `seen` gave")]
    max_id: Annotated[int | None, Meta(description="its largest image id: what to send as seen once shown")]
    positives: int
    negatives: int
    model: str | None
    created_at: str | None
    updated_at: str | None


class ConceptList(Struct):
    catalog: str
    concepts: list[ConceptInfo]


def _info(cat: engine.Catalog, concept: Concept, seen: dict[str, int]) -> ConceptInfo:
    images = new = max_id = None
    if not concept.stale:
        ids = cat.concepts.result(concept.name).ids
        images = int(len(ids))
        max_id = int(ids.max()) if len(ids) else None
        if concept.name in seen:
            new = int((ids > seen[concept.name]).sum())
    doc = concept.to_json()
    request = concept.request
    return ConceptInfo(
        name=concept.name,
        view=concept.view,
        note=concept.note,
        stale=concept.stale,
        images=images,
        new=new,
        max_id=max_id,
        positives=len(request.get("positives") or []),
        negatives=len(request.get("negatives") or []),
        model=request.get("model"),
        created_at=doc["created_at"],
        updated_at=doc["updated_at"] or doc["created_at"],
    )


def list_concepts(served: Served, seen: dict[str, int]) -> list[ConceptInfo]:
    with served.reading():
        cat = served.cat
        return [_info(cat, c, seen) for c in cat.concepts.list()]


def _concept_info(served: Served, name: str, seen: dict[str, int]) -> ConceptInfo:
    with served.reading():
        cat = served.cat
        return _info(cat, cat.concept(name), seen)


# -- writing ---------------------------------------------------------------------------------
def _write(app: App, served: Served, work: Callable[[engine.Catalog], object]):
    """``work(writable catalog)`` on the writer thread; its result."""
    try:
        return app.writer.submit(served, work, timeout=WRITE_WAIT_S)
    except TimeoutError:
        raise ServerBusy(
            "the catalog is busy with other requests and could not be written in time; open the Concepts "
            "panel again in a moment to see whether the change was made"
        ) from None


def _save(app: App, served: Served, data: SaveConceptRequest) -> Concept:
    name = check_name(data.name)
    catalog, result, _, _ = app.results.entry(data.token)
    if catalog != served.name:
        raise InvalidArgument(f"that result is of the catalog {catalog!r}, not {served.name!r}")
    # By the result, not the kind it was kept as: /api/refine keeps its results as searches.
    if getattr(getattr(result, "model", None), "boxes_", None) is None or result.center is None:
        raise InvalidArgument(
            "only a fine-tune's result can be saved as a concept: label images, click Fine-tune, then save; "
            "a search or an opened concept has no model of its own"
        )
    note = data.note.strip()
    return _write(app, served, lambda cat: cat.save_concept(name, result, replace=data.replace, note=note))


def _existing(served: Served, name: str) -> str:
    """``name`` checked and normalised; a 404 naming the saved concepts when there is none."""
    name = check_name(name)
    with served.reading():
        saved = [c.name for c in served.cat.concepts.list()]
    if name not in saved:
        have = f"saved: {', '.join(saved[:20])}" if saved else "none is saved yet"
        raise NotFoundException(f"no concept named {name!r} in the catalog {served.name!r} ({have})")
    return name


# -- the panel -------------------------------------------------------------------------------
def _panel(app: App, served: Served, seen: dict[str, int], done: dict | None = None) -> Template:
    """The Concepts panel's fragment; ``done``: what was just done, to confirm it."""
    concepts = list_concepts(served, seen)
    return HTMXTemplate(
        template_name="_concepts.html",
        context={"catalog": served.name, "concepts": concepts, "done": done, "note_chars": NOTE_CHARS},
    )


def _form_post(path: str):
    """A panel action: a small form (or JSON) body, answered with the panel fragment."""
    return post(
        path,
        sync_to_thread=True,
        status_code=200,
        request_class=BodyRequest,
        operation_class=FORM,
        request_max_body_size=BODY_BYTES,
    )


@get("/concepts", sync_to_thread=True)
def concepts_panel(request: HTMXRequest, catalog: CatalogParam = None, seen: SeenParam = "") -> Template:
    """The catalog's saved concepts: their images, what is new since each was last opened, and
    buttons to open, rename, delete or retrain them."""
    app = state_of(request)
    return _panel(app, app.catalog(catalog), parse_seen(seen))


@_form_post("/concepts/save")
def save_concept(request: BodyRequest, data: JSONBody[SaveConceptRequest]) -> Template:
    app = state_of(request)
    served = app.catalog(data.catalog)
    concept = _save(app, served, data)
    seen = parse_seen(data.seen)
    seen.pop(concept.name, None)  # a new concept: all of it is new
    return _panel(app, served, seen, {"action": "saved", "name": concept.name})


@_form_post("/concepts/rename")
def rename_concept(request: BodyRequest, data: JSONBody[RenameConceptRequest]) -> Template:
    app = state_of(request)
    served = app.catalog(data.catalog)
    name, new_name = _existing(served, data.name), check_name(data.new_name)
    concept = _write(app, served, lambda cat: cat.concepts.rename(name, new_name))
    seen = parse_seen(data.seen)
    if name in seen:  # what was seen of it follows it, as the browser's record does
        seen[concept.name] = seen.pop(name)
    return _panel(app, served, seen, {"action": "renamed", "name": concept.name, "old": name})


@_form_post("/concepts/delete")
def delete_concept(request: BodyRequest, data: JSONBody[ConceptNameRequest]) -> Template:
    app = state_of(request)
    served = app.catalog(data.catalog)
    name = _existing(served, data.name)
    _write(app, served, lambda cat: cat.concepts.delete(name))
    return _panel(app, served, parse_seen(data.seen), {"action": "deleted", "name": name})


@_form_post("/concepts/retrain")
def retrain_concept(request: BodyRequest, data: JSONBody[ConceptNameRequest]) -> Template:
    """Fit a stale concept again from its labels on the catalog's current codes."""
    app = state_of(request)
    served = app.catalog(data.catalog)
    name = _existing(served, data.name)
    _write(app, served, lambda cat: cat.concepts.retrain(name))
    return _panel(app, served, parse_seen(data.seen), {"action": "retrained", "name": name})


# -- opening one -----------------------------------------------------------------------------
def _open(served: Served, name: str, seen: int | None, only_new: bool) -> tuple[engine.Result, dict]:
    """The concept's current images (votes as scores), or with ``only_new`` those above ``seen``
    alone, and the query a kept result of it holds: its name and note, the id above which images
    are new, how many are, its images in all and its largest id."""
    with served.working():
        concept = served.cat.concept(name)
        result = served.cat.concepts.result(name)
    ids = result.ids
    new = None if seen is None else int((ids > seen).sum())
    query = {
        "concept": concept.name,
        "note": concept.note,
        "new_after": seen,
        "new": new,
        "images": int(len(ids)),
        "max_id": int(ids.max()) if len(ids) else None,
        "only_new": only_new and seen is not None,
    }
    changes = {"stats": {**result.stats, "new": new}}
    if query["only_new"]:
        keep = ids > seen
        changes.update(
            ids=ids[keep],
            scores=result.scores[keep],
            sql=f"SELECT id, votes FROM {concept.view} WHERE id > {int(seen)} ORDER BY rank",
        )
        changes["stats"]["results"] = new
    return dataclasses.replace(result, **changes), query


SeenId = Annotated[
    int | None,
    Parameter(
        ge=INT64[0], le=INT64[1], description="the largest image id shown when the user last opened it"
    ),
]


OnlyNew = Annotated[bool, Parameter(description="only the images above `seen`: what is new since")]


@get("/concept/{catalog:str}/{name:str}", sync_to_thread=True)
def open_concept(
    request: HTMXRequest,
    catalog: FromPath[str],
    name: FromPath[str],
    seen: SeenId = None,
    only_new: OnlyNew = False,
) -> Response:
    """A concept's images as a result (kept, pageable and exportable like a fine-tune's), those
    above ``seen`` marked new; a browser opening the link gets the search page showing it."""
    app = state_of(request)
    served = app.catalog(catalog)
    name = _existing(served, name)
    if not request.htmx:
        return Redirect(f"/?catalog={quote(served.name, safe='')}&concept={name}")
    result, query = _open(served, name, seen, only_new)
    token = app.results.put(served.name, result, "refine", query)
    return HTMXTemplate(
        template_name="_results.html",
        context=result_context(app, served, result, "refine", token, 0, query),
        headers={"X-Engine-Ms": f"{result.stats['time_total_ms']:.2f}"},
    )


# -- JSON twins ------------------------------------------------------------------------------
@get("/api/concepts", sync_to_thread=True)
def api_concepts(request: Request, catalog: CatalogParam = None, seen: SeenParam = "") -> ConceptList:
    """The catalog's saved concepts with their image counts, and with ``seen``, how many are new."""
    app = state_of(request)
    served = app.catalog(catalog)
    return ConceptList(served.name, list_concepts(served, parse_seen(seen)))


@post(
    "/api/concepts",
    sync_to_thread=True,
    status_code=201,
    request_class=BodyRequest,
    operation_class=JSON_OR_FORM,
    request_max_body_size=BODY_BYTES,
    description="Save a fine-tune's result (its `result` token from /api/refine) as a concept.",
)
def api_save_concept(request: BodyRequest, data: JSONBody[SaveConceptRequest]) -> ConceptInfo:
    app = state_of(request)
    served = app.catalog(data.catalog)
    concept = _save(app, served, data)
    return _concept_info(served, concept.name, parse_seen(data.seen))


@get(
    "/api/concept/{catalog:str}/{name:str}",
    sync_to_thread=True,
    description="A concept's images, best first, as a result whose token POST /api/sql takes as `result`.",
)
def api_concept(
    request: Request,
    catalog: FromPath[str],
    name: FromPath[str],
    seen: SeenId = None,
    only_new: OnlyNew = False,
    limit: Annotated[int, Parameter(ge=0, le=1_000_000, description="ids to return at most")] = 1000,
) -> ResultResponse:
    app = state_of(request)
    served = app.catalog(catalog)
    result, query = _open(served, _existing(served, name), seen, only_new)
    return ResultResponse.of(result, app.results.put(served.name, result, "refine", query), limit)


BODIES = (SaveConceptRequest, RenameConceptRequest, ConceptNameRequest, ConceptInfo, ConceptList)
ROUTES = (
    concepts_panel,
    save_concept,
    rename_concept,
    delete_concept,
    retrain_concept,
    open_concept,
    api_concepts,
    api_save_concept,
    api_concept,
)
