"""``clip-branches concept ACTION``: saved concepts from the command line (:mod:`engine.concepts`)."""

from __future__ import annotations

import json
import sys

from ..catalog import Catalog
from ..concepts import Concept, export, from_result
from ..live import open_reading, served_by, submit_op, wait_report
from .commands import _limit, _say_capped, _shown, print_json, refine_options

SERVER_WAIT_S = 120.0  # how long a change handed to the server may take


def _via_server(catalog: str, op: dict) -> dict | None:
    """When a server holds ``catalog``, hand it the concept change ``op`` and return its report
    (the concept as saved); None when nobody serves it (change the file here)."""
    if served_by(catalog) is None:
        return None
    return wait_report(catalog, submit_op(catalog, op), SERVER_WAIT_S, what="the concept change")


def _summary(doc: dict, results: int | None) -> dict:
    """The line ``list`` and ``save`` show of a concept, from its ``Concept.to_json()``."""
    request = doc["request"]
    return {
        "name": doc["name"],
        "view": doc["view"],
        "stale": doc["stale"],
        "results": results,
        "positives": len(request.get("positives") or []),
        "negatives": len(request.get("negatives") or []),
        "model": request.get("model"),
        "updated_at": doc["updated_at"],
        "note": doc.get("note", ""),
    }


def _count(cat: Catalog, concept: Concept) -> int | None:
    return None if concept.stale else int(len(cat.concepts.result(concept.name).ids))


def cmd_concept_save(args) -> int:
    """Fine-tune here; save here, or (a server holds the file) read-only here and saved by it."""
    served = served_by(args.catalog) is not None
    with open_reading(args.catalog, 60.0) if served else Catalog.open(args.catalog) as cat:
        result = cat.refine(args.positive, args.negative or (), **refine_options(args), suggestions=0)
        if served:
            concept = from_result(args.name, result, args.note)
            concept.codes_space = cat.setting("codes_space") or ""
        else:
            doc = cat.save_concept(args.name, result, replace=args.replace, note=args.note).to_json()
    if served:
        doc = _via_server(args.catalog, {"op": "save", "doc": export(concept), "replace": args.replace})
    out = _summary(doc, len(result.ids))
    if args.json:
        print_json(out)
    else:
        print(f"saved concept {doc['name']!r}: {out['results']} images; query it as {doc['view']}")
    return 0


def cmd_concept_list(args) -> int:
    with Catalog.open(args.catalog, read_only=True) as cat:
        rows = [_summary(c.to_json(), _count(cat, c)) for c in cat.concepts.list()]
    if args.json:
        print_json({"concepts": rows})
        return 0
    print("name\tresults\tstale\tpositives\tnegatives\tmodel\tupdated_at")
    for r in rows:
        results = "" if r["results"] is None else r["results"]
        print(
            f"{r['name']}\t{results}\t{str(r['stale']).lower()}\t{r['positives']}\t{r['negatives']}\t"
            f"{r['model']}\t{r['updated_at']}"
        )
    if not rows:
        print(
            "# no concepts saved; save one with `clip-branches concept save CATALOG NAME --positive IDS`",
            file=sys.stderr,
        )
    return 0


def cmd_concept_show(args) -> int:
    served = args.seen and served_by(args.catalog) is not None
    with (
        open_reading(args.catalog, 60.0)
        if served
        else Catalog.open(args.catalog, read_only=not args.seen) as cat
    ):
        concept = cat.concept(args.name)
        ids = cat.concepts.new_ids(concept.name) if args.new else cat.concepts.result(concept.name).ids
        if args.seen and not served:
            cat.concepts.mark_seen(concept.name)
    if served:
        _via_server(args.catalog, {"op": "seen", "name": concept.name})
    limit = _limit(args, len(ids))
    if args.json:
        print_json(
            {
                **concept.to_json(),
                "ids": ids[:limit].tolist(),
                "results": int(len(ids)),
                **_shown(limit, len(ids)),
            }
        )
    else:
        what = "new since it was last opened" if args.new else "in it"
        print(
            f"# {concept.name}: {len(ids)} images {what}; SQL: SELECT * FROM {concept.view}", file=sys.stderr
        )
        print("id")
        for i in ids[:limit].tolist():
            print(i)
    _say_capped(limit, len(ids))
    return 0


def cmd_concept_rename(args) -> int:
    doc = _via_server(args.catalog, {"op": "rename", "name": args.name, "new_name": args.new_name})
    if doc is None:
        with Catalog.open(args.catalog) as cat:
            doc = cat.concepts.rename(args.name, args.new_name).to_json()
    print(f"renamed; query it as {doc['view']}")
    return 0


def cmd_concept_delete(args) -> int:
    if _via_server(args.catalog, {"op": "delete", "name": args.name}) is None:
        with Catalog.open(args.catalog) as cat:
            cat.concepts.delete(args.name)
    print(f"deleted concept {args.name.strip().lower()!r}")
    return 0


def cmd_concept_retrain(args) -> int:
    served = _via_server(args.catalog, {"op": "retrain", "name": args.name}) is not None
    with open_reading(args.catalog, 60.0) if served else Catalog.open(args.catalog) as cat:
        concept = cat.concept(args.name) if served else cat.concepts.retrain(args.name)
        out = _summary(concept.to_json(), _count(cat, concept))
    if args.json:
        print_json(out)
    else:
        print(f"retrained concept {concept.name!r} from its labels: {out['results']} images")
    return 0


def cmd_concept_export(args) -> int:
    with Catalog.open(args.catalog, read_only=True) as cat:
        doc = cat.concepts.export(args.name, None if args.file == "-" else args.file)
    if args.file == "-":
        print(json.dumps(doc, indent=1))
    else:
        print(f"wrote concept {doc['name']!r} to {args.file}", file=sys.stderr)
    return 0


def cmd_concept_import(args) -> int:
    source = sys.stdin.buffer.read() if args.file == "-" else args.file
    if served_by(args.catalog) is not None:
        doc = _import_served(args, source)
    else:
        with Catalog.open(args.catalog) as cat:
            doc = cat.concepts.import_file(source, name=args.name, replace=args.replace).to_json()
    state = (
        "stale: this catalog's codes are not those it was fitted on; run `concept retrain`"
        if doc["stale"]
        else "ready"
    )
    print(f"imported concept {doc['name']!r} ({state}); query it as {doc['view']}")
    return 0


def _import_served(args, source) -> dict:
    """``concept import`` on a served catalog: the file is checked here, saved by the server."""
    from pathlib import Path

    from ..concepts import read_export
    from ..errors import InvalidArgument

    if isinstance(source, str) and not Path(source).is_file():
        raise InvalidArgument(f"no concept file at {source}")
    data = Path(source).read_bytes() if isinstance(source, str) else source
    concept, space = read_export(data, args.name)
    concept.codes_space = space
    return _via_server(args.catalog, {"op": "save", "doc": export(concept), "replace": args.replace})
