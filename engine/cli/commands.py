"""The ``clip-branches`` subcommands: one ``cmd_NAME(args)`` per command, each returning the
exit status; :mod:`engine.cli.parser` maps the command line to them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..boxes import BoxSet
from ..catalog import Catalog
from ..errors import CatalogError
from ..live import served_by

DEFAULT_ENCODER = "demo:fashion-v1"
HANDOVER_WAIT_S = 600.0  # how long `ingest` on a served catalog waits for the server's report
EXIT_FAILURE = 1  # the command ran and failed; the message says what to do
EXIT_USAGE = 2  # bad arguments (argparse's own code)
EXIT_PIPE = 141  # stdout closed early (128 + SIGPIPE), as a shell pipeline's tools end


def print_json(obj) -> None:
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
        print_json(info)
    else:
        for key, value in info.items():
            print(f"{key}: {json.dumps(value, default=_json_default)}")
    return 0


def cmd_migrate(args) -> int:
    with Catalog.open(args.catalog) as cat:  # a writable open applies the pending migrations
        version = cat.store.schema_version()
    print(f"{args.catalog}: schema version {version}, the latest this clip-branches knows")
    return 0


def cmd_synth(args) -> int:
    from ..datasets.synth import synth_catalog

    stats = synth_catalog(
        args.catalog,
        args.rows,
        seed=args.seed,
        n_clusters=args.clusters,
        elongation=args.elongation,
        block_size=args.block_size,
        progress=not args.quiet,
    )
    print_json(stats) if args.json else print(
        f"wrote {stats['rows']} rows in {stats['clusters']} clusters to {args.catalog} ({stats['bytes']} bytes)"
    )
    return 0


def cmd_index(args) -> int:
    with Catalog.open(args.catalog) as cat:
        if cat.setting("head") is not None and not args.codes_only:
            from ..codes.pipeline import index_embeddings

            stats = index_embeddings(
                cat,
                block_size=args.block_size,
                compact=args.compact,
                mapped=args.mapped,
                progress=not args.quiet,
            )
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
            stats = cat.build_index(
                block_size=args.block_size, compact=args.compact, mapped=args.mapped, progress=not args.quiet
            )
    if args.json:
        print_json(stats)
    else:
        shrunk = (
            f"; the file shrank from {stats['bytes_before']:,} to {stats['bytes_after']:,} bytes"
            if stats["compacted"]
            else ""
        )
        print(f"indexed {stats['rows']} rows in {stats['blocks']} blocks{shrunk}")
    return 0


def cmd_demo_data(args) -> int:
    from ..datasets.demodata import write_fashion_mnist

    manifest = write_fashion_mnist(args.directory, limit=args.limit)
    print(f"wrote the Fashion-MNIST images and their manifest {manifest}")
    return 0


def cmd_ingest(args) -> int:
    from ..encoders import load_encoder
    from ..ingest import ingest

    if Path(args.catalog).exists() and served_by(args.catalog) is not None:
        return _ingest_served(args)
    with Catalog.open(args.catalog) if Path(args.catalog).exists() else Catalog.create(args.catalog) as cat:
        enc_id = args.encoder or cat.setting("encoder") or DEFAULT_ENCODER
        if args.spark:
            from ..ingest.parts import spark_ingest

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


def _ingest_served(args) -> int:
    """``ingest`` on a catalog a server holds: stage here, hand over, print the server's report."""
    from ..encoders import load_encoder
    from ..ingest.run import IngestReport
    from ..live import hand_over, open_reading, wait_report

    if args.spark or args.reembed:
        raise CatalogError(
            f"{args.catalog} is being served; ingest into it without --spark and --reembed, or stop "
            "`clip-branches serve` first"
        )
    with open_reading(args.catalog, 60.0) as cat:
        enc_id = args.encoder or cat.setting("encoder") or DEFAULT_ENCODER
    encoder = load_encoder(enc_id, device=args.device, batch_size=args.batch_size)
    name = hand_over(
        args.catalog,
        args.sources,
        encoder,
        batch_size=args.batch_size,
        max_pixels=args.max_pixels,
        thumbnails=not args.no_thumbnails,
        progress=not args.quiet,
    )
    if not args.quiet:
        print("# staged; the server is taking the images in", file=sys.stderr)
    body = wait_report(args.catalog, name, HANDOVER_WAIT_S)
    fields = IngestReport.__dataclass_fields__
    report = IngestReport(**{k: v for k, v in body.items() if k in fields and k != "skipped_files"})
    report.skipped_files = [tuple(p) for p in body.get("skipped_files", [])]
    with open_reading(args.catalog, 60.0) as cat:
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
        print_json(summary)
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
        + (f"; {report.coded} searchable now, before the next index" if report.coded else "")
    )
    return 0


def cmd_add(args) -> int:
    """ingest, then train-head when the catalog has no head or has outgrown it, then index."""
    from ..codes.pipeline import index_embeddings, train_head
    from ..encoders import load_encoder
    from ..ingest import ingest

    if Path(args.catalog).exists() and served_by(args.catalog) is not None:
        # The server takes the images in, codes them with its head and indexes them when idle.
        args.spark, args.no_thumbnails = None, False
        return _ingest_served(args)
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
        print_json(out)
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
    from ..ingest.spark import encode_with_spark

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
    print_json(job) if args.json else print(
        f"{args.directory}: {job['encoded']} encoded, {job['failed']} unreadable ({job['todo']} of {job['files']} "
        f"files to encode) on {job['parallelism']} workers, {job['images_per_second']:.0f} images/s; take it in with "
        f"`clip-branches ingest-parts CATALOG {args.directory}`"
    )
    return 0


def cmd_ingest_parts(args) -> int:
    from ..ingest.parts import ingest_parts

    with Catalog.open(args.catalog) if Path(args.catalog).exists() else Catalog.create(args.catalog) as cat:
        report = ingest_parts(cat, args.directory, reembed=args.reembed)
        status, has_head = cat.index_status(), cat.setting("head") is not None
    return _print_ingest(args, report, status, has_head)


def cmd_train_head(args) -> int:
    from ..codes.pipeline import train_head

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
    print_json(summary) if args.json else print(
        f"trained a {summary['method']} head on {summary['rows']} images (sha256 {summary['sha256'][:12]})"
    )
    return 0


def cmd_demo(args) -> int:
    """demo-data, ingest, train-head and index in one go."""
    from ..codes.pipeline import index_embeddings, train_head
    from ..datasets.demodata import write_fashion_mnist
    from ..encoders import load_encoder
    from ..ingest import ingest

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
        print_json(out)
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
    if args.spark is not None:
        return _refine_on_spark(args)
    if args.out is not None or args.overwrite:
        args.parser.error("--out and --overwrite go with --spark MASTER (the ranking of a refine on Spark)")
    with Catalog.open(args.catalog, read_only=True) as cat:
        result = cat.refine(
            args.positive, args.negative or (), **refine_options(args), suggestions=args.suggestions
        )
        return _print_result(cat, result, args)


def refine_options(args) -> dict:
    """The options of a refine round from the command line (see ``parser._round_options``)."""
    return {
        "model": args.model,
        "sampled_negatives": args.sampled_negatives,
        "negative_weight": args.negative_weight,
        "random_state": args.seed,
        "guide": not args.no_guide,
    }


def _refine_on_spark(args) -> int:
    """``refine --spark``: the first ``--limit`` ids come back from Spark, the rest go to ``--out``."""
    from ..spark_refine import refine_on_spark

    result = refine_on_spark(
        args.catalog,
        args.positive,
        args.negative or (),
        master=args.spark,
        out=args.out,
        overwrite=args.overwrite,
        model=args.model,
        sampled_negatives=args.sampled_negatives,
        negative_weight=args.negative_weight,
        random_state=args.seed,
        guide=not args.no_guide,
        top=args.limit or None,
    )
    if args.json:
        print_json({**result.to_json(), **_shown(len(result.ids), result.count)})
    else:
        print("id\tscore")
        for i, score in zip(result.ids.tolist(), result.scores.tolist(), strict=True):
            print(f"{i}\t{score}")
        where = f"; the whole ranking is in {result.out}" if result.out else ""
        print(f"# {result.count} results; {result.stats['time_total_ms']:.1f} ms{where}", file=sys.stderr)
    _say_capped(len(result.ids), result.count)
    return 0


def _print_result(cat: Catalog, result, args) -> int:
    """JSON (ids capped at --limit, saying so, with the total) or a header and one
    ``id<TAB>score[<TAB>label]`` line per image."""
    limit = _limit(args, len(result.ids))
    if args.json:
        print_json({**result.to_json(limit=limit), **_shown(limit, len(result.ids))})
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
    settings = [f"{name}={value}" for name, value in args.setting] + args.set
    serve(args.catalogs, args.host, args.port, settings=settings, watch=args.watch)
    return 0


def serve(
    catalogs: list[str], host: str, port: int, settings: list[str] | None = None, watch: list[str] = ()
) -> None:
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
    app = create_app(catalogs, config, watch=watch)
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
        print_json(table.to_pylist())
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
        stats = cat.export_parquet(
            args.directory, overwrite=args.overwrite, shards=args.shards, progress=not args.quiet
        )
    shards = f" in {len(stats['shards'])} shards" if "shards" in stats else ""
    print_json(stats) if args.json else print(
        f"exported {stats['rows']} rows to {stats['directory']}{shards}"
    )
    return 0


def cmd_import(args) -> int:
    Catalog.import_parquet(args.directory, args.catalog, progress=not args.quiet).close()
    print(f"imported {args.directory} into {args.catalog}")
    return 0
