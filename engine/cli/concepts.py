"""``clip-branches concept ACTION``: saved concepts from the command line (:mod:`engine.concepts`)."""

from __future__ import annotations

import json
import sys

from ..catalog import Catalog
from ..concepts import Concept
from .commands import _limit, _say_capped, _shown, print_json


def _summary(concept: Concept, results: int | None) -> dict:
    out = {
        "name": concept.name,
        "view": concept.view,
        "stale": concept.stale,
        "results": results,
        "positives": len(concept.request.get("positives") or []),
        "negatives": len(concept.request.get("negatives") or []),
        "model": concept.request.get("model"),
        "updated_at": concept.to_json()["updated_at"],
        "note": concept.note,
    }
    return out


def _count(cat: Catalog, concept: Concept) -> int | None:
    return None if concept.stale else int(len(cat.concepts.result(concept.name).ids))


def cmd_concept_save(args) -> int:
    with Catalog.open(args.catalog) as cat:
        result = cat.refine(
            args.positive,
            args.negative or (),
            model=args.model,
            sampled_negatives=args.sampled_negatives,
            negative_weight=args.negative_weight,
            random_state=args.seed,
            guide=not args.no_guide,
            suggestions=0,
        )
        concept = cat.save_concept(args.name, result, replace=args.replace, note=args.note)
        out = _summary(concept, len(result.ids))
    if args.json:
        print_json(out)
    else:
        print(f"saved concept {concept.name!r}: {out['results']} images; query it as {concept.view}")
    return 0


def cmd_concept_list(args) -> int:
    with Catalog.open(args.catalog, read_only=True) as cat:
        rows = [_summary(c, _count(cat, c)) for c in cat.concepts.list()]
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
    with Catalog.open(args.catalog, read_only=not args.seen) as cat:
        concept = cat.concept(args.name)
        ids = cat.concepts.new_ids(concept.name) if args.new else cat.concepts.result(concept.name).ids
        if args.seen:
            cat.concepts.mark_seen(concept.name)
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
    with Catalog.open(args.catalog) as cat:
        concept = cat.concepts.rename(args.name, args.new_name)
    print(f"renamed; query it as {concept.view}")
    return 0


def cmd_concept_delete(args) -> int:
    with Catalog.open(args.catalog) as cat:
        cat.concepts.delete(args.name)
    print(f"deleted concept {args.name.strip().lower()!r}")
    return 0


def cmd_concept_retrain(args) -> int:
    with Catalog.open(args.catalog) as cat:
        concept = cat.concepts.retrain(args.name)
        out = _summary(concept, _count(cat, concept))
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
    with Catalog.open(args.catalog) as cat:
        concept = cat.concepts.import_file(source, name=args.name, replace=args.replace)
    state = (
        "stale: this catalog's codes are not those it was fitted on; run `concept retrain`"
        if concept.stale
        else "ready"
    )
    print(f"imported concept {concept.name!r} ({state}); query it as {concept.view}")
    return 0
