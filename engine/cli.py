"""The ``clip-branches`` command."""

from __future__ import annotations

import argparse
import json
import os
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
EXIT_FAILURE = 1  # the command ran and failed; the message says what to do
EXIT_USAGE = 2  # bad arguments (argparse's own code)
EXIT_PIPE = 141  # stdout closed early (128 + SIGPIPE), as a shell pipeline's tools end

DESCRIPTION = """\
Text-to-image search with fine-tuning: search a catalog of images by text, label some results
positive or negative, and refine: a classifier of axis-aligned boxes trained on the labels
returns every image of the catalog it classifies positive.

first steps:
  clip-branches add photos.duckdb ~/Pictures          make a folder searchable (ingest, head, index)
  clip-branches search photos.duckdb "a red bicycle"  the 60 nearest images: id, score, label
  clip-branches refine photos.duckdb --positive 12,40,7 --negative 3
  clip-branches serve photos.duckdb                   the web UI, at http://127.0.0.1:8000/
  clip-branches demo                                  build the offline demo catalog and serve it

Run `clip-branches COMMAND --help` for a command's options and their defaults."""

EPILOG = """\
scores: search prints the squared L2 distance between 32-byte codes: lower is nearer. A text
  lands farther from every image than an image does (CLIP's gap between the two), so text
  queries score about 100,000 and image queries 0 to a few thousand; compare within one query.
  refine and select print member votes: higher is surer (the ensemble's are 1-25).
output: tab-separated with a header row, or JSON with --json; errors under --json are JSON too.
exit status: 0 success, 1 failure (the message names the fix), 2 bad usage, 130 interrupted,
  141 output pipe closed."""


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
        info = {
            "path": str(cat.path),
            "bytes": cat.path.stat().st_size,
            **cat.index_status(),
            "settings": cat.settings(),
        }
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

    stats = synth_catalog(
        args.catalog,
        args.rows,
        seed=args.seed,
        n_clusters=args.clusters,
        elongation=args.elongation,
        block_size=args.block_size,
        progress=not args.quiet,
    )
    _print_json(stats) if args.json else print(
        f"wrote {stats['rows']} rows in {stats['clusters']} clusters to {args.catalog} ({stats['bytes']} bytes)"
    )
    return 0


def cmd_index(args) -> int:
    with Catalog.open(args.catalog) as cat:
        if cat.setting("head") is not None and not args.codes_only:
            from .pipeline import index_embeddings

            stats = index_embeddings(cat, block_size=args.block_size, progress=not args.quiet)
        else:
            if (
                not args.codes_only
                and cat.sql("SELECT count(*) AS n FROM embedding_parts").column("n")[0].as_py()
            ):
                raise CatalogError(
                    f"{args.catalog} has embedded images but no head to turn them into codes; "
                    f"run `clip-branches train-head {args.catalog}` first, then index "
                    "(--codes-only indexes only the codes already stored)"
                )
            stats = cat.build_index(block_size=args.block_size, progress=not args.quiet)
        if args.compact:
            stats.update(cat.compact(progress=not args.quiet))
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

            report = spark_ingest(
                cat,
                args.sources,
                enc_id,
                master=args.spark,
                partitions=args.partitions,
                batch_size=args.batch_size,
                device=args.device,
                max_pixels=args.max_pixels,
                thumbnails=not args.no_thumbnails,
                reembed=args.reembed,
                progress=not args.quiet,
            )
        else:
            encoder = load_encoder(enc_id, device=args.device, batch_size=args.batch_size)
            report = ingest(
                cat,
                args.sources,
                encoder,
                batch_size=args.batch_size,
                workers=args.workers,
                progress=not args.quiet,
                max_pixels=args.max_pixels,
                thumbnails=not args.no_thumbnails,
                reembed=args.reembed,
            )
        status, has_head = cat.index_status(), cat.setting("head") is not None
    return _print_ingest(args, report, status, has_head)


# DuckDB marks deleted rows and reuses their space, but does not erase it.
_REMOVED_HINT = (
    "the catalog file still holds the bytes of the removed images (their paths and metadata) until "
    "`clip-branches compact {catalog}` rewrites it without them"
)


def _print_ingest(args, report, status: dict, has_head: bool) -> int:
    summary = report.to_json()
    if args.json:
        _print_json(summary)
        return 0
    pending = status["images_without_codes"] + status["stale_codes"]
    if pending and not has_head:
        print(
            f"next: `clip-branches train-head {args.catalog}`, then `clip-branches index {args.catalog}` make "
            f"the images searchable (`clip-branches add` runs ingest, train-head and index in one go)",
            file=sys.stderr,
        )
    elif pending:
        print(
            f"new or changed images not yet searchable: {pending}; run `clip-branches index {args.catalog}`",
            file=sys.stderr,
        )
    for uri, reason in summary.get("skipped_files", [])[:20]:
        print(f"skipped {uri}: {reason}", file=sys.stderr)
    if report.removed:
        print(_REMOVED_HINT.format(catalog=args.catalog), file=sys.stderr)
    print(
        f"{args.catalog}: {summary['added']} added, {summary['updated']} updated, {summary['removed']} removed, "
        f"{summary['skipped']} skipped; {summary['images_per_second']:.0f} images/s"
    )
    return 0


def cmd_add(args) -> int:
    """ingest, then train-head when the catalog has no head or has outgrown it, then index."""
    from .encoders import load_encoder
    from .ingest import ingest
    from .pipeline import index_embeddings, train_head

    out = {}
    with Catalog.open(args.catalog) if Path(args.catalog).exists() else Catalog.create(args.catalog) as cat:
        enc_id = args.encoder or cat.setting("encoder") or DEFAULT_ENCODER
        encoder = load_encoder(enc_id, device=args.device, batch_size=args.batch_size)
        report = ingest(
            cat,
            args.sources,
            encoder,
            batch_size=args.batch_size,
            workers=args.workers,
            progress=not args.quiet,
            max_pixels=args.max_pixels,
            reembed=args.reembed,
        )
        out["ingest"] = report.to_json()
        _note(args, _ingested(report))
        for uri, reason in out["ingest"].get("skipped_files", [])[:20]:
            _note(args, f"skipped {uri}: {reason}")
        if report.removed:
            _note(args, _REMOVED_HINT.format(catalog=args.catalog))
        reason = _head_due(cat)
        if reason:
            _note(args, f"training the head ({reason})")
            out["head"] = train_head(cat, encoder=encoder, seed=0, progress=not args.quiet)
        status = cat.index_status()
        if (
            out.get("head")
            or status["images_without_codes"]
            or status["stale_codes"]
            or status["index"] is None
        ):
            out["index"] = index_embeddings(cat, progress=not args.quiet)
        rows = cat.index_status()["rows"]
    if args.json:
        _print_json(out)
    else:
        print(
            f'{args.catalog}: {rows} images searchable; try `clip-branches search {args.catalog} "..."` '
            f"or `clip-branches serve {args.catalog}`"
        )
    return 0


def _head_due(cat: Catalog) -> str | None:
    """Why the head must be (re)trained, or None: none yet, another encoder, or twice the images
    it was trained on (a head fitted to a handful of images describes a larger catalog poorly)."""
    if cat.setting("head") is None:
        return "none yet"
    head = cat.head()
    if head.info.get("encoder") != cat.setting("encoder"):
        return "the images are embedded by another encoder"
    trained_on = int(head.info.get("rows") or 0)
    now = int(
        cat.sql("SELECT count(*) AS n FROM images WHERE embedding_part IS NOT NULL").column("n")[0].as_py()
    )
    if now >= 2 * trained_on:
        return f"trained on {trained_on} images, the catalog now has {now}"
    return None


def _ingested(report) -> str:
    return (
        f"ingested: {report.added} added, {report.updated} updated, {report.removed} removed, "
        f"{report.skipped} skipped"
    )


def _note(args, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr)


def cmd_spark_encode(args) -> int:
    from .distributed import encode_with_spark

    job = encode_with_spark(
        args.sources,
        args.directory,
        encoder_id=args.encoder,
        catalog=args.catalog,
        master=args.master,
        partitions=args.partitions,
        batch_size=args.batch_size,
        device=args.device,
        max_pixels=args.max_pixels,
        thumbnails=not args.no_thumbnails,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    _print_json(job) if args.json else print(
        f"{args.directory}: {job['encoded']} encoded, {job['failed']} unreadable ({job['todo']} of {job['files']} "
        f"files to encode) on {job['parallelism']} workers, {job['images_per_second']:.0f} images/s; take it in with "
        f"`clip-branches ingest-parts CATALOG {args.directory}`"
    )
    return 0


def cmd_ingest_parts(args) -> int:
    from .distributed import ingest_parts

    with Catalog.open(args.catalog) if Path(args.catalog).exists() else Catalog.create(args.catalog) as cat:
        report = ingest_parts(cat, args.directory, reembed=args.reembed)
        status, has_head = cat.index_status(), cat.setting("head") is not None
    return _print_ingest(args, report, status, has_head)


def cmd_train_head(args) -> int:
    from .pipeline import train_head

    with Catalog.open(args.catalog) as cat:
        summary = train_head(
            cat,
            method=args.method,
            koleo=args.koleo,
            epochs=args.epochs,
            seed=args.seed,
            out_dim=args.dims,
            progress=not args.quiet,
        )
    _print_json(summary) if args.json else print(
        f"trained a {summary['method']} head on {summary['rows']} images (sha256 {summary['sha256'][:12]})"
    )
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
        report = ingest(
            cat,
            [str(manifest)],
            load_encoder(DEFAULT_ENCODER, batch_size=args.batch_size),
            batch_size=args.batch_size,
            workers=args.workers,
            progress=not args.quiet,
        )
        print(_ingested(report), file=sys.stderr)
        if report.added or report.updated or report.removed or cat.setting("head") is None:
            summary = train_head(cat, epochs=args.epochs, seed=0, progress=not args.quiet)
            print(f"head: {summary['method']} on {summary['rows']} images", file=sys.stderr)
            stats = index_embeddings(cat, progress=not args.quiet)
            print(f"index: {stats['rows']} rows in {stats['blocks']} blocks", file=sys.stderr)
    print(f"demo catalog ready: {catalog}", flush=True)
    if not args.no_serve:
        serve([str(catalog)], args.host, args.port)
    return 0


def cmd_compact(args) -> int:
    with Catalog.open(args.catalog) as cat:
        stats = cat.compact(progress=not args.quiet)
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
    limit = _limit(args, len(result.ids))
    if args.json:
        out = result.to_json()
        out.update(ids=out["ids"][:limit], votes=out["votes"][:limit], **_shown(limit, len(result.ids)))
        _print_json(out)
    else:
        print("id\tvotes")
        for i, v in zip(result.ids[:limit].tolist(), result.votes[:limit].tolist(), strict=True):
            print(f"{i}\t{v}")
        print(
            f"# {len(result.ids)} rows; {result.stats['blocks_touched']} of {result.stats['blocks']} blocks "
            f"touched; {result.stats['time_total_ms']:.1f} ms",
            file=sys.stderr,
        )
    _say_capped(limit, len(result.ids))
    return 0


def _limit(args, total: int) -> int:
    """How many ids to print: ``--limit`` (0: all)."""
    return total if not args.limit else min(args.limit, total)


def _shown(limit: int, total: int) -> dict:
    return {"ids_shown": limit, "ids_capped": limit < total}


def _say_capped(limit: int, total: int) -> None:
    if limit < total:
        print(
            f"# printed the first {limit} of {total} ids; --limit N prints more, --limit 0 all",
            file=sys.stderr,
        )


def cmd_search(args) -> int:
    given = [
        flag
        for flag, v in (("QUERY", args.query), ("--image", args.image), ("--id", args.id))
        if v is not None
    ]
    if len(given) != 1:
        args.parser.error(
            "give a text QUERY, --image FILE or --id N" + (f" (not {' and '.join(given)})" if given else "")
        )
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
        result = cat.refine(
            args.positive,
            args.negative or (),
            model=args.model,
            sampled_negatives=args.sampled_negatives,
            negative_weight=args.negative_weight,
            random_state=args.seed,
            guide=not args.no_guide,
            suggestions=args.suggestions,
        )
        return _print_result(cat, result, args)


def _print_result(cat: Catalog, result, args) -> int:
    """JSON (ids capped at --limit, saying so, with the total) or a header and one
    ``id<TAB>score[<TAB>label]`` line per image."""
    limit = _limit(args, len(result.ids))
    if args.json:
        _print_json({**result.to_json(limit=limit), **_shown(limit, len(result.ids))})
        _say_capped(limit, len(result.ids))
        return 0
    shown = result.ids[:limit]
    has_label = "label" in cat.image_columns()
    labels = {}
    if has_label and len(shown):
        rows = cat.sql(
            "SELECT id, label FROM images WHERE id IN (SELECT unnest($ids))", {"ids": shown.tolist()}
        )
        labels = dict(zip(rows.column("id").to_pylist(), rows.column("label").to_pylist(), strict=True))
    print("id\tscore" + ("\tlabel" if has_label else ""))
    for i, score in zip(shown.tolist(), result.scores[: len(shown)].tolist(), strict=True):
        print(f"{i}\t{score}" + (f"\t{_tsv(labels.get(i))}" if has_label else ""))
    s = result.stats
    print(f"# {s['results']} results; {s['time_total_ms']:.1f} ms", file=sys.stderr)
    _say_capped(limit, len(result.ids))
    if len(result.suggestions):
        print("# label next: " + ",".join(str(i) for i in result.suggestions.tolist()), file=sys.stderr)
    return 0


def _tsv(value) -> str:
    """One TSV field: empty for NULL; tabs and line breaks would split the row, so they become spaces."""
    if value is None:
        return ""
    return str(value).replace("\t", " ").replace("\r", " ").replace("\n", " ")


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
    print(
        "clip-branches: loading the catalogs and warming up the search kernels (the first start on a "
        "machine compiles them, about a minute)",
        flush=True,
    )
    app = create_app(catalogs, config)
    print(f"clip-branches: serving {', '.join(catalogs)} at http://{host}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def cmd_sql(args) -> int:
    with Catalog.open(args.catalog, read_only=True) as cat:
        if args.result:
            query, params = _with_last_result(cat, args.result, args.query)
            table = cat.sql(query, params)
        else:
            table = cat.sql(args.query)
    if args.json:
        _print_json(table.to_pylist())
    else:
        print("\t".join(table.column_names))
        for row in table.to_pylist():
            print("\t".join(_tsv(v) for v in row.values()))
    return 0


def _with_last_result(cat: Catalog, path: str, query: str) -> tuple[str, dict]:
    """``query`` with the table ``last_result(id, score, rank)``: the whole result whose ``sql``
    the JSON file at ``path`` holds (``refine``, ``search`` or ``select`` with ``--json``), run
    again on the catalog, so ids past the printed ``--limit`` are there too."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        saved = json.loads(text)["sql"]
    except OSError as e:
        raise CatalogError(f"cannot read the result file {path}: {e.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise CatalogError(
            f'{path} is not a result of `clip-branches refine|search|select --json` (no "sql" field)'
        ) from None
    rows = cat.sql(saved)
    if "id" not in rows.column_names:
        raise CatalogError(f'the "sql" of {path} returns no id column')
    score = next((c for c in ("votes", "dist", "score") if c in rows.column_names), None)
    ids = rows.column("id").to_pylist()
    scores = rows.column(score).to_pylist() if score else [None] * len(ids)
    cte = (
        "last_result AS (SELECT unnest($last_ids) AS id, unnest($last_scores) AS score, "
        "unnest(range(1, len($last_ids) + 1)) AS rank)"
    )
    head = query.lstrip()
    word = head[:4].lower()
    if word == "with" and len(head) > 4 and not (head[4].isalnum() or head[4] == "_"):
        rest = head[4:].lstrip()
        if rest[:9].lower() == "recursive":
            return f"WITH RECURSIVE {cte}, {rest[9:].lstrip()}", {"last_ids": ids, "last_scores": scores}
        return f"WITH {cte}, {rest}", {"last_ids": ids, "last_scores": scores}
    return f"WITH {cte}\n{query}", {"last_ids": ids, "last_scores": scores}


def cmd_export(args) -> int:
    if Path(args.directory).exists() and not args.overwrite:
        raise CatalogError(
            f"{args.directory} already exists; choose another folder, or add --overwrite to replace "
            "the export it holds"
        )
    with Catalog.open(args.catalog, read_only=True) as cat:
        stats = cat.export_parquet(args.directory, overwrite=args.overwrite, progress=not args.quiet)
    _print_json(stats) if args.json else print(f"exported {stats['rows']} rows to {stats['directory']}")
    return 0


def cmd_import(args) -> int:
    Catalog.import_parquet(args.directory, args.catalog, progress=not args.quiet).close()
    print(f"imported {args.directory} into {args.catalog}")
    return 0


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written, and every option's default after its help (unless unset)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default in ([], "")
        if (
            "%(default)" not in text
            and action.option_strings
            and not unset
            and action.default is not argparse.SUPPRESS
        ):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 2, as JSON on stdout when ``--json`` is among the arguments."""

    json_errors = False

    def error(self, message: str):
        if _Parser.json_errors:
            _print_json({"error": {"type": "UsageError", "message": f"{self.prog}: {message}"}})
            self.exit(EXIT_USAGE)
        super().error(message)


def _json_flag(s: argparse.ArgumentParser) -> None:
    s.add_argument("--json", action="store_true", help="print JSON on stdout (errors too)")


def _quiet_flag(s: argparse.ArgumentParser, what: str = "progress on stderr") -> None:
    s.add_argument("--quiet", action="store_true", help=f"no {what}")


def _encode_options(s: argparse.ArgumentParser, encoder_help: str) -> None:
    s.add_argument("--encoder", default=None, metavar="ID", help=encoder_help)
    s.add_argument("--device", default=None, help="cuda, mps or cpu (default: the first available)")
    s.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per encoder call")
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="decoding processes (default: the CPU count; 0: decode in this process)",
    )
    s.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="larger images are skipped as possible decompression bombs",
    )
    s.add_argument(
        "--reembed",
        action="store_true",
        help="allow an encoder other than the catalog's: every image is embedded again",
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="clip-branches", description=DESCRIPTION, epilog=EPILOG, formatter_class=_Formatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help: str, func, description: str | None = None) -> argparse.ArgumentParser:
        s = sub.add_parser(
            name,
            help=help,
            description=description or help[0].upper() + help[1:] + ".",
            formatter_class=_Formatter,
            epilog=EPILOG if name in SCORED else None,
        )
        s.set_defaults(func=func, parser=s)
        return s

    catalog_help = "the catalog file (DuckDB)"
    encoder_help = (
        f"encoder id (default: the catalog's, else {DEFAULT_ENCODER}), e.g. "
        "open_clip:ViT-B-32/laion2b_s34b_b79k (needs the [clip] extra; weights download once)"
    )

    s = command(
        "add",
        "make image folders or manifests searchable: ingest, then train-head when the catalog has "
        "no head or has doubled since, then index",
        cmd_add,
        description=(
            "Make image folders or manifests searchable in one go: ingest them (new, changed and removed files "
            "only), train the head when the catalog has none or holds twice the images it was trained on, and "
            "index. The catalog is created when it does not exist. Labels and captions come in through a CSV or "
            "Parquet manifest with a uri column (other columns become metadata)."
        ),
    )
    s.add_argument("catalog", help=catalog_help)
    s.add_argument(
        "sources", nargs="+", metavar="SOURCE", help="a folder, or a CSV/Parquet manifest with a uri column"
    )
    _encode_options(s, encoder_help)
    _quiet_flag(s)
    _json_flag(s)

    s = command("create", "create an empty catalog file", cmd_create)
    s.add_argument("catalog", help=catalog_help)

    s = command("info", "show a catalog's rows, index state and settings (never changes the file)", cmd_info)
    s.add_argument("catalog", help=catalog_help)
    s.add_argument("--read-only", action="store_true", help=argparse.SUPPRESS)  # always read-only now
    _json_flag(s)

    s = command(
        "migrate", "upgrade a catalog written by an older clip-branches to this one's schema", cmd_migrate
    )
    s.add_argument("catalog", help=catalog_help)

    s = command("synth", "write a synthetic catalog of clustered codes with a label column", cmd_synth)
    s.add_argument("catalog", help=catalog_help)
    s.add_argument("--rows", type=int, required=True, metavar="N", help="images (codes) to write")
    s.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same catalog")
    s.add_argument(
        "--clusters", type=int, default=None, metavar="N", help="clusters (default: one per 10,000 rows)"
    )
    s.add_argument(
        "--elongation", type=float, default=40.0, help="stretch of clusters along a random direction"
    )
    s.add_argument(
        "--block-size", type=int, default=DEFAULT_BLOCK_SIZE, metavar="N", help="rows per k-d block"
    )
    _quiet_flag(s)
    _json_flag(s)

    s = command(
        "index", "compute the codes with the head and sort them into k-d blocks with zone maps", cmd_index
    )
    s.add_argument("catalog", help=catalog_help)
    s.add_argument(
        "--block-size", type=int, default=DEFAULT_BLOCK_SIZE, metavar="N", help="rows per k-d block"
    )
    s.add_argument("--compact", action="store_true", help="rewrite the file afterwards to drop freed space")
    s.add_argument(
        "--codes-only",
        action="store_true",
        help="only re-sort the stored codes (default: recompute them from the embeddings when a head exists)",
    )
    _quiet_flag(s)
    _json_flag(s)

    s = command(
        "demo-data", "write the Fashion-MNIST images as PNG files with a labels manifest", cmd_demo_data
    )
    s.add_argument("directory", help="where the PNG files and labels.csv go")
    s.add_argument(
        "--limit", type=int, default=None, metavar="N", help="only the first N images of each split"
    )

    s = command(
        "ingest",
        "embed image folders or manifests into a catalog (incremental, resumable); "
        "`add` also trains the head and indexes",
        cmd_ingest,
    )
    s.add_argument("catalog", help=catalog_help)
    s.add_argument(
        "sources", nargs="+", metavar="SOURCE", help="a folder, or a CSV/Parquet manifest with a uri column"
    )
    _encode_options(s, encoder_help)
    s.add_argument("--no-thumbnails", action="store_true", help="do not cache thumbnails for the web UI")
    s.add_argument(
        "--spark",
        default=None,
        metavar="MASTER",
        help="encode with Spark workers instead, e.g. local[4] or spark://host:7077 (needs pyspark, Java)",
    )
    s.add_argument(
        "--partitions", type=int, default=None, metavar="N", help="Spark tasks (default: two per worker)"
    )
    _quiet_flag(s)
    _json_flag(s)

    s = command(
        "spark-encode",
        "encode image folders or manifests with Spark workers into a folder that "
        "`ingest-parts` takes into a catalog",
        cmd_spark_encode,
    )
    s.add_argument("directory", help="output folder (new or empty)")
    s.add_argument(
        "sources", nargs="+", metavar="SOURCE", help="a folder, or a CSV/Parquet manifest with a uri column"
    )
    s.add_argument("--encoder", default=DEFAULT_ENCODER, metavar="ID", help="encoder id")
    s.add_argument(
        "--catalog",
        default=None,
        help="encode only what this catalog lacks or holds changed, under the ids it would give",
    )
    s.add_argument("--master", default="local[4]", help="Spark master")
    s.add_argument(
        "--partitions", type=int, default=None, metavar="N", help="Spark tasks (default: two per worker)"
    )
    s.add_argument(
        "--device", default=None, help="cuda, mps or cpu on the workers (default: the first available)"
    )
    s.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per encoder call")
    s.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="larger images are skipped as possible decompression bombs",
    )
    s.add_argument("--no-thumbnails", action="store_true", help="do not cache thumbnails for the web UI")
    s.add_argument("--overwrite", action="store_true", help="replace what the output folder holds")
    _quiet_flag(s, "Spark progress bar")
    _json_flag(s)

    s = command(
        "ingest-parts",
        "take the output of `spark-encode` into a catalog (atomic; taking it in again adds nothing)",
        cmd_ingest_parts,
    )
    s.add_argument("catalog", help=catalog_help)
    s.add_argument("directory", help="the folder `spark-encode` wrote")
    s.add_argument(
        "--reembed",
        action="store_true",
        help="allow an encoder other than the catalog's: every image is embedded again",
    )
    _json_flag(s)

    s = command(
        "train-head", "train the 32-d head and fit the 8-bit quantizer on the raw embeddings", cmd_train_head
    )
    s.add_argument("catalog", help=catalog_help)
    s.add_argument(
        "--method",
        default="auto",
        choices=["auto", "contrastive", "distill", "pca"],
        help="auto: contrastive with a caption column, else distillation",
    )
    s.add_argument("--koleo", type=float, default=DEFAULT_KOLEO, help="weight of the KoLeo regulariser")
    s.add_argument("--epochs", type=int, default=10, metavar="N", help="passes over the embeddings")
    s.add_argument("--dims", type=int, default=32, metavar="N", help="width of the head's output")
    s.add_argument("--seed", type=int, default=0, help="random seed: the same seed trains the same head")
    _quiet_flag(s)
    _json_flag(s)

    s = command(
        "demo",
        "build the offline demo catalog (demo-data, ingest, train-head, index), then serve it",
        cmd_demo,
    )
    s.add_argument(
        "catalog", nargs="?", default="demo/fashion.duckdb", help="the catalog file (default: %(default)s)"
    )
    s.add_argument("--data", default=None, help="where the demo images go (default: beside the catalog)")
    s.add_argument(
        "--limit", type=int, default=None, metavar="N", help="only the first N images of each split"
    )
    s.add_argument("--epochs", type=int, default=10, metavar="N", help="head training passes")
    s.add_argument("--batch-size", type=int, default=256, metavar="N", help="images per encoder call")
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="decoding processes (default: the CPU count; 0: decode in this process)",
    )
    _quiet_flag(s)
    s.add_argument("--no-serve", action="store_true", help="build the catalog, then exit")
    s.add_argument("--host", default="127.0.0.1", help="address to serve on")
    s.add_argument("--port", type=int, default=8000, help="port to serve on")

    s = command("compact", "rewrite the catalog file without freed space", cmd_compact)
    s.add_argument("catalog", help=catalog_help)
    _quiet_flag(s)

    s = command("select", "select the images inside a box set (JSON file, or - for stdin)", cmd_select)
    s.add_argument("catalog", help=catalog_help)
    s.add_argument(
        "--boxes",
        required=True,
        metavar="FILE.json",
        help='{"boxes": [{"3": [10, 40], ...}, ...], "members": [...]} or a list of boxes; - reads stdin',
    )
    s.add_argument("--min-votes", type=int, default=1, metavar="K", help="rows in at least K members' boxes")
    s.add_argument(
        "--limit",
        type=int,
        default=1000,
        metavar="N",
        help="ids to print; 0: all (the total is always reported)",
    )
    _json_flag(s)

    s = command("search", "the k images nearest to a text query, an image file or an image id", cmd_search)
    s.add_argument("catalog", help=catalog_help)
    s.add_argument("query", nargs="?", help="text to search for")
    s.add_argument("--image", metavar="FILE", help="search with this image file instead of text")
    s.add_argument("--id", type=int, metavar="N", help="search with the image of this id (more like this)")
    s.add_argument("-k", type=int, default=60, help="how many images")
    s.add_argument("--limit", type=int, default=0, metavar="N", help="ids to print; 0: all k")
    _json_flag(s)

    s = command(
        "refine",
        "train on labelled ids and return every image of the catalog it classifies positive",
        cmd_refine,
    )
    s.add_argument("catalog", help=catalog_help)
    s.add_argument("--positive", required=True, metavar="IDS", help="comma-separated positive ids")
    s.add_argument("--negative", default="", metavar="IDS", help="comma-separated negative ids")
    s.add_argument(
        "--model",
        default="ensemble",
        choices=MODELS,
        help="the classifier: 25 decision branch models voting, one model, a tree or a forest",
    )
    s.add_argument(
        "--sampled-negatives",
        type=int,
        default=DEFAULT_SAMPLED_NEGATIVES,
        metavar="N",
        help="random catalog rows added as negatives",
    )
    s.add_argument(
        "--negative-weight",
        type=float,
        default=1.0,
        metavar="W",
        help="how much one of your negatives counts against one sampled row",
    )
    s.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random_state of the model; the same labels and seed give the same result",
    )
    s.add_argument(
        "--no-guide",
        action="store_true",
        help="train on the labels and the sampled negatives alone, without the linear guide",
    )
    s.add_argument(
        "--suggestions",
        type=int,
        default=DEFAULT_SUGGESTIONS,
        metavar="N",
        help="unlabelled ids to suggest labelling next (printed on stderr, or in the JSON)",
    )
    s.add_argument(
        "--limit",
        type=int,
        default=1000,
        metavar="N",
        help="ids to print; 0: all (the total is always reported)",
    )
    _json_flag(s)

    s = command("serve", "serve the search-and-refine web UI over one or more catalogs", cmd_serve)
    s.add_argument("catalogs", nargs="+", metavar="CATALOG", help="catalog files, opened read-only")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=8000, help="port to listen on")
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a web setting, e.g. sql_time_limit_s=10 (repeatable; the settings are listed below)",
    )
    s.epilog = _settings_help()

    s = command(
        "sql",
        "run one read-only SQL query on a catalog",
        cmd_sql,
        description=(
            "Run one read-only SQL query (SELECT, WITH, VALUES, ...) on a catalog and print its rows.\n"
            "With --result, the query also sees the table last_result(id, score, rank): every row of a\n"
            "result saved with --json, not only the ids printed:\n\n"
            "  clip-branches refine CAT --positive 1,2,3 --json > r.json\n"
            "  clip-branches sql CAT --result r.json \\\n"
            '      "SELECT label, count(*) FROM last_result JOIN images USING (id) GROUP BY label"'
        ),
    )
    s.add_argument("catalog", help=catalog_help)
    s.add_argument("query", help="the SQL query")
    s.add_argument(
        "--result",
        metavar="FILE.json",
        help="the --json output of refine, search or select: its rows become the table last_result",
    )
    _json_flag(s)

    s = command("export", "write the catalog as a Parquet dataset in block order", cmd_export)
    s.add_argument("catalog", help=catalog_help)
    s.add_argument("directory", help="the output folder")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier export in that folder")
    _quiet_flag(s)
    _json_flag(s)

    s = command("import", "create a catalog from a Parquet export", cmd_import)
    s.add_argument("directory", help="a folder written by `clip-branches export`")
    s.add_argument("catalog", help="the new catalog file")
    _quiet_flag(s)
    return p


SCORED = ("search", "refine", "select")


def _settings_help() -> str:
    """The web settings ``serve --set`` takes, with their defaults."""
    import textwrap
    from dataclasses import fields

    from web.settings import Settings

    lines = ["settings (--set NAME=VALUE):"]
    for f in fields(Settings):
        text = f"{f.name} = {f.default!r}: {f.metadata['help']}"
        lines += textwrap.wrap(text, 96, initial_indent="  ", subsequent_indent="      ")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _Parser.json_errors = "--json" in argv
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CatalogError as e:
        if getattr(args, "json", False):
            _print_json({"error": {"type": type(e).__name__, "message": str(e)}})
        else:
            print(f"clip-branches: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("clip-branches: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout has gone (`| head`): stop quietly; point stdout at /dev/null so
        # the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE
