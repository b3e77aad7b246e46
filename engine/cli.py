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
from .head import DEFAULT_KOLEO
from .layout import DEFAULT_BLOCK_SIZE
from .refine import DEFAULT_SAMPLED_NEGATIVES, DEFAULT_SUGGESTIONS, MODELS

DEFAULT_ENCODER = "demo:fashion-v1"
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default limit


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
    with Catalog.open(args.catalog, read_only=True) as cat:  # showing never changes the file
        info = {"path": str(cat.path), "bytes": cat.path.stat().st_size, **cat.index_status(),
                "settings": cat.settings()}
    if args.json:
        _print_json(info)
    else:
        for key, value in info.items():
            print(f"{key}: {json.dumps(value, default=_json_default)}")
    return 0


def cmd_migrate(args) -> int:
    from . import schema

    with Catalog.open(args.catalog) as cat:  # a writable open applies the pending migrations
        version = schema.current_version(cat.con)
    print(f"{args.catalog}: schema version {version}, the latest this clip-branches knows")
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
        if cat.setting("head") is not None and not args.codes_only:
            from .pipeline import index_embeddings

            stats = index_embeddings(cat, block_size=args.block_size)
        else:
            if not args.codes_only and cat.sql("SELECT count(*) AS n FROM embedding_parts").column("n")[0].as_py():
                raise CatalogError(f"{args.catalog} has embedded images but no head to turn them into codes; "
                                   f"run `clip-branches train-head {args.catalog}` first, then index "
                                   "(--codes-only indexes only the codes already stored)")
            stats = cat.build_index(block_size=args.block_size)
        if args.compact:
            stats.update(cat.compact())
    _print_json(stats) if args.json else print(f"indexed {stats['rows']} rows in {stats['blocks']} blocks")
    return 0


def cmd_demo_data(args) -> int:
    from .demodata import write_fashion_mnist

    manifest = write_fashion_mnist(args.directory, limit=args.limit)
    print(f"wrote the Fashion-MNIST images and their manifest {manifest}")
    return 0


def cmd_ingest(args) -> int:
    from .encoders import load_encoder
    from .ingest import ingest

    with Catalog.open(args.catalog) if Path(args.catalog).exists() else Catalog.create(args.catalog) as cat:
        enc_id = args.encoder or cat.setting("encoder") or DEFAULT_ENCODER
        if args.spark:
            from .distributed import spark_ingest

            report = spark_ingest(cat, args.sources, enc_id, master=args.spark, partitions=args.partitions,
                                  batch_size=args.batch_size, device=args.device, max_pixels=args.max_pixels,
                                  thumbnails=not args.no_thumbnails, reembed=args.reembed, progress=not args.quiet)
        else:
            encoder = load_encoder(enc_id, device=args.device, batch_size=args.batch_size)
            report = ingest(cat, args.sources, encoder, batch_size=args.batch_size, workers=args.workers,
                            progress=not args.quiet, max_pixels=args.max_pixels, thumbnails=not args.no_thumbnails,
                            reembed=args.reembed)
        status = cat.index_status()
    return _print_ingest(args, report, status)


def _print_ingest(args, report, status: dict) -> int:
    summary = report.to_json()
    if args.json:
        _print_json(summary)
        return 0
    pending = status["images_without_codes"] + status["stale_codes"]
    if pending and status["index"] is not None:
        print(f"new or changed images not yet searchable: {pending}; run `clip-branches index {args.catalog}`",
              file=sys.stderr)
    for uri, reason in summary.get("skipped_files", [])[:20]:
        print(f"skipped {uri}: {reason}", file=sys.stderr)
    print(
        f"{args.catalog}: {summary['added']} added, {summary['updated']} updated, {summary['removed']} removed, "
        f"{summary['skipped']} skipped; {summary['images_per_second']:.0f} images/s")
    return 0


def cmd_spark_encode(args) -> int:
    from .distributed import encode_with_spark

    job = encode_with_spark(args.sources, args.directory, encoder_id=args.encoder, catalog=args.catalog,
                            master=args.master, partitions=args.partitions, batch_size=args.batch_size,
                            device=args.device, max_pixels=args.max_pixels, thumbnails=not args.no_thumbnails,
                            overwrite=args.overwrite, progress=not args.quiet)
    _print_json(job) if args.json else print(
        f"{args.directory}: {job['encoded']} encoded, {job['failed']} unreadable ({job['todo']} of {job['files']} "
        f"files to encode) on {job['parallelism']} workers, {job['images_per_second']:.0f} images/s; take it in with "
        f"`clip-branches ingest-parts CATALOG {args.directory}`")
    return 0


def cmd_ingest_parts(args) -> int:
    from .distributed import ingest_parts

    with Catalog.open(args.catalog) if Path(args.catalog).exists() else Catalog.create(args.catalog) as cat:
        report = ingest_parts(cat, args.directory, reembed=args.reembed)
        status = cat.index_status()
    return _print_ingest(args, report, status)


def cmd_train_head(args) -> int:
    from .pipeline import train_head

    def log(entry):
        if not args.quiet:
            print(json.dumps(entry), file=sys.stderr)

    with Catalog.open(args.catalog) as cat:
        summary = train_head(cat, method=args.method, koleo=args.koleo, epochs=args.epochs, seed=args.seed,
                             out_dim=args.dims, log=log)
    _print_json(summary) if args.json else print(
        f"trained a {summary['method']} head on {summary['rows']} images (sha256 {summary['sha256'][:12]})")
    return 0


def cmd_demo(args) -> int:
    """demo-data, ingest, train-head and index in one go."""
    from .demodata import write_fashion_mnist
    from .encoders import load_encoder
    from .ingest import ingest
    from .pipeline import index_embeddings, train_head

    catalog = Path(args.catalog)
    data = Path(args.data) if args.data else catalog.parent / "fashion-mnist"
    manifest = write_fashion_mnist(data, limit=args.limit)
    print(f"demo images: {manifest}", file=sys.stderr)
    with Catalog.open(catalog) if catalog.exists() else Catalog.create(catalog) as cat:
        report = ingest(cat, [str(manifest)], load_encoder(DEFAULT_ENCODER, batch_size=args.batch_size),
                        batch_size=args.batch_size, workers=args.workers, progress=not args.quiet)
        print(f"ingested: {report.added} added, {report.updated} updated, {report.removed} removed, "
              f"{report.skipped} skipped", file=sys.stderr)
        if report.added or report.updated or report.removed or cat.setting("head") is None:
            summary = train_head(cat, epochs=args.epochs, seed=0)
            print(f"head: {summary['method']} on {summary['rows']} images", file=sys.stderr)
            stats = index_embeddings(cat)
            print(f"index: {stats['rows']} rows in {stats['blocks']} blocks", file=sys.stderr)
    print(f"demo catalog ready: {catalog}", flush=True)
    if not args.no_serve:
        serve([str(catalog)], args.host, args.port)
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


def cmd_search(args) -> int:
    with Catalog.open(args.catalog, read_only=True) as cat:
        if args.id is not None:
            result = cat.search(id=args.id, k=args.k)
        elif args.image is not None:
            result = cat.search(image=args.image, k=args.k)
        else:
            result = cat.search(args.query, k=args.k)
        return _print_result(cat, result, args)


def cmd_refine(args) -> int:
    with Catalog.open(args.catalog, read_only=True) as cat:
        result = cat.refine(args.positive, args.negative or (), model=args.model,
                            sampled_negatives=args.sampled_negatives, negative_weight=args.negative_weight,
                            random_state=args.seed, guide=not args.no_guide, suggestions=args.suggestions)
        return _print_result(cat, result, args)


def _print_result(cat: Catalog, result, args) -> int:
    """JSON (ids capped at --limit, with the total) or one ``id<TAB>score<TAB>label`` line per image."""
    if args.json:
        _print_json(result.to_json(limit=args.limit))
        return 0
    shown = result.ids[: args.limit]
    labels = {}
    if "label" in cat.image_columns() and len(shown):
        rows = cat.sql("SELECT id, label FROM images WHERE id IN (SELECT unnest($ids))", {"ids": shown.tolist()})
        labels = dict(zip(rows.column("id").to_pylist(), rows.column("label").to_pylist(), strict=True))
    for i, score in zip(shown.tolist(), result.scores[: len(shown)].tolist(), strict=True):
        print(f"{i}\t{score}" + (f"\t{labels.get(i)}" if labels else ""))
    s = result.stats
    print(f"# {s['results']} results; {s['time_total_ms']:.1f} ms", file=sys.stderr)
    if len(result.suggestions):
        print("# label next: " + ",".join(str(i) for i in result.suggestions.tolist()), file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    serve(args.catalogs, args.host, args.port, settings=args.set)
    return 0


def serve(catalogs: list[str], host: str, port: int, settings: list[str] | None = None) -> None:
    """Serve the web UI over ``catalogs`` until interrupted."""
    try:
        import uvicorn

        from web import Settings, create_app
    except ImportError as e:
        raise CatalogError(f"the web UI needs its dependencies: pip install -e . ({e})") from None
    config = Settings.parse(settings or [])
    # Requests run in parallel threads; one torch thread per query encoding keeps concurrent
    # searches from oversubscribing the cores (measured with scripts/bench_web.py, 8 clients).
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    print("clip-branches: loading the catalogs and warming up the search kernels (the first start on a "
          "machine compiles them, about a minute)", flush=True)
    app = create_app(catalogs, config)
    print(f"clip-branches: serving {', '.join(catalogs)} at http://{host}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


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

    s = sub.add_parser("info", help="show a catalog's rows, index state and settings (never changes the file)")
    s.add_argument("catalog")
    s.add_argument("--read-only", action="store_true", help=argparse.SUPPRESS)  # always read-only now
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("migrate", help="upgrade a catalog written by an older clip-branches to this one's schema")
    s.add_argument("catalog")
    s.set_defaults(func=cmd_migrate)

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
    s.add_argument("--codes-only", action="store_true",
                   help="only re-sort the stored codes (default: recompute them from the embeddings when a head exists)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("demo-data", help="write the Fashion-MNIST images as PNG files with a labels manifest")
    s.add_argument("directory")
    s.add_argument("--limit", type=int, default=None, help="only the first N images of each split")
    s.set_defaults(func=cmd_demo_data)

    s = sub.add_parser("ingest", help="embed image folders or manifests into a catalog (incremental, resumable)")
    s.add_argument("catalog")
    s.add_argument("sources", nargs="+", metavar="SOURCE", help="a folder, or a CSV/Parquet manifest with a uri column")
    s.add_argument("--encoder", default=None,
                   help=f"encoder id (default: the catalog's, else {DEFAULT_ENCODER}); e.g. open_clip:ViT-B-32/laion2b_s34b_b79k")
    s.add_argument("--device", default=None, help="cuda, mps or cpu (default: the first available)")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPU count; 0: in-process)")
    s.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="larger images are skipped as possible decompression bombs")
    s.add_argument("--no-thumbnails", action="store_true", help="do not cache thumbnails for the web UI")
    s.add_argument("--reembed", action="store_true",
                   help="allow an encoder other than the catalog's: every image is embedded again")
    s.add_argument("--spark", default=None, metavar="MASTER",
                   help="encode with Spark workers instead, e.g. local[4] or spark://host:7077 (needs pyspark, Java)")
    s.add_argument("--partitions", type=int, default=None, help="Spark tasks (default: two per worker)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("spark-encode", help="encode image folders or manifests with Spark workers into a folder "
                                            "that `ingest-parts` takes into a catalog")
    s.add_argument("directory", help="output folder (new or empty)")
    s.add_argument("sources", nargs="+", metavar="SOURCE", help="a folder, or a CSV/Parquet manifest with a uri column")
    s.add_argument("--encoder", default=DEFAULT_ENCODER, help=f"encoder id (default {DEFAULT_ENCODER})")
    s.add_argument("--catalog", default=None,
                   help="encode only what this catalog lacks or holds changed, under the ids it would give")
    s.add_argument("--master", default="local[4]", help="Spark master (default local[4])")
    s.add_argument("--partitions", type=int, default=None, help="Spark tasks (default: two per worker)")
    s.add_argument("--device", default=None, help="cuda, mps or cpu on the workers (default: the first available)")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    s.add_argument("--no-thumbnails", action="store_true")
    s.add_argument("--overwrite", action="store_true", help="replace what the output folder holds")
    s.add_argument("--quiet", action="store_true", help="no Spark progress bar")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_spark_encode)

    s = sub.add_parser("ingest-parts", help="take the output of `spark-encode` into a catalog (atomic; "
                                            "taking it in again adds nothing)")
    s.add_argument("catalog")
    s.add_argument("directory")
    s.add_argument("--reembed", action="store_true",
                   help="allow an encoder other than the catalog's: every image is embedded again")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_ingest_parts)

    s = sub.add_parser("train-head", help="train the 32-d head and fit the 8-bit quantizer on the raw embeddings")
    s.add_argument("catalog")
    s.add_argument("--method", default="auto", choices=["auto", "contrastive", "distill", "pca"],
                   help="auto: contrastive with a caption column, else distillation")
    s.add_argument("--koleo", type=float, default=DEFAULT_KOLEO, help="weight of the KoLeo regulariser")
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--dims", type=int, default=32)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_train_head)

    s = sub.add_parser("demo", help="build the offline demo catalog (demo-data, ingest, train-head, index), then serve it")
    s.add_argument("catalog", nargs="?", default="demo/fashion.duckdb")
    s.add_argument("--data", default=None, help="where the demo images go (default: beside the catalog)")
    s.add_argument("--limit", type=int, default=None, help="only the first N images of each split")
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--no-serve", action="store_true", help="build the catalog, then exit")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(func=cmd_demo)

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

    s = sub.add_parser("search", help="the k images nearest to a text query, an image file or an image id")
    s.add_argument("catalog")
    s.add_argument("query", nargs="?", help="text to search for")
    s.add_argument("--image", help="search with this image file instead of text")
    s.add_argument("--id", type=int, help="search with the image of this id (more like this)")
    s.add_argument("-k", type=int, default=60, help="how many images (default 60)")
    s.add_argument("--limit", type=int, default=None, help="print at most this many ids")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("refine", help="train on labelled ids and return every image of the catalog it classifies positive")
    s.add_argument("catalog")
    s.add_argument("--positive", required=True, help="comma-separated positive ids")
    s.add_argument("--negative", default="", help="comma-separated negative ids")
    s.add_argument("--model", default="ensemble", choices=MODELS,
                   help="the classifier: 25 decision branch models voting, one model, a tree or a forest "
                        "(default: %(default)s)")
    s.add_argument("--sampled-negatives", type=int, default=DEFAULT_SAMPLED_NEGATIVES,
                   help="random catalog rows added as negatives (default: %(default)s)")
    s.add_argument("--negative-weight", type=float, default=1.0,
                   help="how much one of your negatives counts against one sampled row (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0,
                   help="random_state of the model; the same labels and seed give the same result (default: %(default)s)")
    s.add_argument("--no-guide", action="store_true",
                   help="train on the labels and the sampled negatives alone, without the linear guide")
    s.add_argument("--suggestions", type=int, default=DEFAULT_SUGGESTIONS,
                   help="unlabelled ids to suggest labelling next (default: %(default)s)")
    s.add_argument("--limit", type=int, default=1000, help="ids to print (default 1000; the count is always total)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_refine)

    s = sub.add_parser("serve", help="serve the search-and-refine web UI over one or more catalogs")
    s.add_argument("catalogs", nargs="+")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a web setting, e.g. sql_time_limit_s=10 (repeatable; the settings are listed in README.md)")
    s.set_defaults(func=cmd_serve)

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
