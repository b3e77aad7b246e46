"""The ``clip-branches`` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .boxes import BoxSet
from .catalog import Catalog
from .errors import CatalogError
from .layout import DEFAULT_BLOCK_SIZE


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, default=_json_default)
    sys.stdout.write("\n")


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def cmd_create(args) -> int:
    Catalog.create(args.catalog).close()
    print(f"created {args.catalog}")
    return 0


def cmd_info(args) -> int:
    with Catalog.open(args.catalog, read_only=args.read_only) as cat:
        info = {"path": str(cat.path), "bytes": cat.path.stat().st_size, **cat.index_status(),
                "settings": cat.settings()}
    if args.json:
        _print_json(info)
    else:
        for key, value in info.items():
            print(f"{key}: {json.dumps(value, default=_json_default)}")
    return 0


def cmd_synth(args) -> int:
    from .synth import synth_catalog

    stats = synth_catalog(args.catalog, args.rows, seed=args.seed, n_clusters=args.clusters,
                          elongation=args.elongation, block_size=args.block_size)
    _print_json(stats) if args.json else print(
        f"wrote {stats['rows']} rows in {stats['clusters']} clusters to {args.catalog} ({stats['bytes']} bytes)")
    return 0


def cmd_index(args) -> int:
    with Catalog.open(args.catalog) as cat:
        stats = cat.build_index(block_size=args.block_size)
        if args.compact:
            stats.update(cat.compact())
    _print_json(stats) if args.json else print(f"indexed {stats['rows']} rows in {stats['blocks']} blocks")
    return 0


def cmd_compact(args) -> int:
    with Catalog.open(args.catalog) as cat:
        stats = cat.compact()
    print(f"{args.catalog}: {stats['bytes_before']} -> {stats['bytes_after']} bytes")
    return 0


def cmd_select(args) -> int:
    path = Path(args.boxes)
    try:
        text = sys.stdin.read() if args.boxes == "-" else path.read_text(encoding="utf-8")
    except OSError as e:
        raise CatalogError(f"cannot read box file {args.boxes}: {e.strerror}") from None
    boxset = BoxSet.from_json(text)
    with Catalog.open(args.catalog, read_only=True) as cat:
        result = cat.select(boxset, min_votes=args.min_votes)
    if args.json:
        _print_json(result.to_json())
    else:
        for i, v in zip(result.ids[: args.limit].tolist(), result.votes[: args.limit].tolist(), strict=True):
            print(f"{i}\t{v}")
        print(f"# {len(result.ids)} rows; {result.stats['blocks_touched']} of {result.stats['blocks']} blocks "
              f"touched; {result.stats['time_total_ms']:.1f} ms", file=sys.stderr)
    return 0


def cmd_sql(args) -> int:
    with Catalog.open(args.catalog, read_only=True) as cat:
        table = cat.sql(args.query)
    if args.json:
        _print_json(table.to_pylist())
    else:
        print(table.to_pandas().to_string() if _has_pandas() else table)
    return 0


def _has_pandas() -> bool:
    try:
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True


def cmd_export(args) -> int:
    with Catalog.open(args.catalog, read_only=True) as cat:
        stats = cat.export_parquet(args.directory, overwrite=args.overwrite)
    _print_json(stats) if args.json else print(f"exported {stats['rows']} rows to {stats['directory']}")
    return 0


def cmd_import(args) -> int:
    Catalog.import_parquet(args.directory, args.catalog).close()
    print(f"imported {args.directory} into {args.catalog}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clip-branches", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("create", help="create an empty catalog file")
    s.add_argument("catalog")
    s.set_defaults(func=cmd_create)

    s = sub.add_parser("info", help="show a catalog's rows, index state and settings")
    s.add_argument("catalog")
    s.add_argument("--read-only", action="store_true", help="do not migrate an older catalog")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("synth", help="write a synthetic catalog of clustered codes with a label column")
    s.add_argument("catalog")
    s.add_argument("--rows", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--clusters", type=int, default=None, help="default: about one per 10,000 rows")
    s.add_argument("--elongation", type=float, default=40.0, help="stretch of clusters along a random direction")
    s.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("index", help="sort the codes into k-d block order and write the zone maps")
    s.add_argument("catalog")
    s.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE)
    s.add_argument("--compact", action="store_true", help="rewrite the file afterwards to drop freed space")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("compact", help="rewrite the catalog file without freed space")
    s.add_argument("catalog")
    s.set_defaults(func=cmd_compact)

    s = sub.add_parser("select", help="select the images inside a box set (JSON file, or - for stdin)")
    s.add_argument("catalog")
    s.add_argument("--boxes", required=True, metavar="FILE.json")
    s.add_argument("--min-votes", type=int, default=1)
    s.add_argument("--limit", type=int, default=100, help="rows to print without --json")
    s.add_argument("--json", action="store_true", help="print ids, votes, sql and stats as JSON")
    s.set_defaults(func=cmd_select)

    s = sub.add_parser("sql", help="run one read-only SQL query on a catalog")
    s.add_argument("catalog")
    s.add_argument("query")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_sql)

    s = sub.add_parser("export", help="write the catalog as a Parquet dataset in block order")
    s.add_argument("catalog")
    s.add_argument("directory")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("import", help="create a catalog from a Parquet export")
    s.add_argument("directory")
    s.add_argument("catalog")
    s.set_defaults(func=cmd_import)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CatalogError as e:
        print(f"clip-branches: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clip-branches: interrupted", file=sys.stderr)
        return 130
