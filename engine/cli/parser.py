"""The ``clip-branches`` command line: the parser, its help texts and what each command takes."""

from __future__ import annotations

import argparse

from ..codes.head import DEFAULT_KOLEO
from ..learn.refine import MODELS
from ..limits import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_K,
    DEFAULT_MAX_PIXELS,
    DEFAULT_SAMPLED_NEGATIVES,
    DEFAULT_SUGGESTIONS,
    PRINT_LIMIT,
)
from .commands import (
    DEFAULT_ENCODER,
    EXIT_USAGE,
    cmd_add,
    cmd_compact,
    cmd_create,
    cmd_demo,
    cmd_demo_data,
    cmd_export,
    cmd_import,
    cmd_index,
    cmd_info,
    cmd_ingest,
    cmd_ingest_parts,
    cmd_migrate,
    cmd_refine,
    cmd_search,
    cmd_select,
    cmd_serve,
    cmd_spark_encode,
    cmd_sql,
    cmd_synth,
    cmd_train_head,
    print_json,
)
from .concepts import (
    cmd_concept_delete,
    cmd_concept_export,
    cmd_concept_import,
    cmd_concept_list,
    cmd_concept_rename,
    cmd_concept_retrain,
    cmd_concept_save,
    cmd_concept_show,
)

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


class CommandParser(argparse.ArgumentParser):
    """Usage errors exit 2, as JSON on stdout when ``--json`` is among the arguments."""

    json_errors = False

    def error(self, message: str):
        if CommandParser.json_errors:
            print_json({"error": {"type": "UsageError", "message": f"{self.prog}: {message}"}})
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


def _round_options(s: argparse.ArgumentParser) -> None:
    """The options of a refine round: model, sampled negatives, weight, seed, guide."""
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


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="clip-branches", description=DESCRIPTION, epilog=EPILOG, formatter_class=_Formatter
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)

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
    s.add_argument(
        "--compact",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="rewrite the file afterwards to drop the old codes' space (default: yes)",
    )
    s.add_argument(
        "--mapped",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also write a memory-mapped copy of the codes beside the file (CATALOG.kd, 40 bytes "
        "per image), which a restarted server or a CLI query opens in a fraction of the load "
        "from the catalog (default: as the last index build did)",
    )
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
        default=PRINT_LIMIT,
        metavar="N",
        help="ids to print; 0: all (the total is always reported)",
    )
    _json_flag(s)

    s = command("search", "the k images nearest to a text query, an image file or an image id", cmd_search)
    s.add_argument("catalog", help=catalog_help)
    s.add_argument("query", nargs="?", help="text to search for")
    s.add_argument("--image", metavar="FILE", help="search with this image file instead of text")
    s.add_argument("--id", type=int, metavar="N", help="search with the image of this id (more like this)")
    s.add_argument("-k", type=int, default=DEFAULT_K, help="how many images")
    s.add_argument("--limit", type=int, default=0, metavar="N", help="ids to print; 0: all k")
    _json_flag(s)

    s = command(
        "refine",
        "train on labelled ids and return every image of the catalog it classifies positive",
        cmd_refine,
        description=(
            "Train on labelled ids and return every image of the catalog it classifies positive.\n"
            "With --spark MASTER, the catalog argument is a folder `clip-branches export` wrote (plain or\n"
            "with --shards): the round trains here on the rows it needs, Spark SQL runs its SQL over the\n"
            "Parquet files, and --out gets the whole ranking (id, votes, rank) as Parquet:\n\n"
            "  clip-branches export photos.duckdb photos-export --shards 4\n"
            "  clip-branches refine --spark local[4] photos-export --positive 12,40,7 --out ranked"
        ),
    )
    s.add_argument("catalog", help=f"{catalog_help}; with --spark, an export folder (path or URI)")
    s.add_argument("--positive", required=True, metavar="IDS", help="comma-separated positive ids")
    s.add_argument("--negative", default="", metavar="IDS", help="comma-separated negative ids")
    _round_options(s)
    s.add_argument(
        "--suggestions",
        type=int,
        default=DEFAULT_SUGGESTIONS,
        metavar="N",
        help="unlabelled ids to suggest labelling next (on stderr or in the JSON; not with --spark)",
    )
    s.add_argument(
        "--limit",
        type=int,
        default=PRINT_LIMIT,
        metavar="N",
        help="ids to print; 0: all (the total is always reported)",
    )
    s.add_argument(
        "--spark",
        default=None,
        metavar="MASTER",
        help="run on Spark over an export folder, e.g. local[4] or spark://host:7077 (needs pyspark, Java)",
    )
    s.add_argument(
        "--out", default=None, metavar="DIR", help="with --spark: write the whole ranking there as Parquet"
    )
    s.add_argument("--overwrite", action="store_true", help="with --out: replace what the folder holds")
    _json_flag(s)

    s = command(
        "concept",
        "save a fine-tune under a name and query it from any DuckDB client; list, show, retrain, ...",
        None,
        description=(
            "Saved concepts: a fine-tuned box set kept in the catalog under a name, with the labels it was\n"
            "trained on. Each is a view concept_NAME (id, votes, rank) in the file, so any DuckDB client\n"
            "queries it without clip-branches, and it classifies images as they arrive:\n\n"
            "  clip-branches concept save photos.duckdb sneakers --positive 12,40,7 --negative 3\n"
            '  duckdb -readonly photos.duckdb "SELECT uri FROM concept_sneakers JOIN images USING (id)"'
        ),
    )
    csub = s.add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=CommandParser, help="what to do"
    )

    def action(name: str, help: str, func) -> argparse.ArgumentParser:
        a = csub.add_parser(
            name, help=help, description=help[0].upper() + help[1:] + ".", formatter_class=_Formatter
        )
        a.set_defaults(func=func, parser=a)
        a.add_argument("catalog", help=catalog_help)
        return a

    a = action("save", "fine-tune on labelled ids and keep the result under a name", cmd_concept_save)
    a.add_argument("name", help="the concept's name: letters, digits, underscores (its view: concept_NAME)")
    a.add_argument("--positive", required=True, metavar="IDS", help="comma-separated positive ids")
    a.add_argument("--negative", default="", metavar="IDS", help="comma-separated negative ids")
    _round_options(a)
    a.add_argument("--note", default="", help="a line saying what the concept is")
    a.add_argument("--replace", action="store_true", help="replace a concept of that name")
    _json_flag(a)
    a = action("list", "the saved concepts, with their sizes and whether they are stale", cmd_concept_list)
    _json_flag(a)
    a = action("show", "one concept: its definition, and its images now, best first", cmd_concept_show)
    a.add_argument("name", help="the concept's name")
    a.add_argument("--new", action="store_true", help="only images added since it was last opened")
    a.add_argument("--seen", action="store_true", help="then record it as opened: those are no longer new")
    a.add_argument(
        "--limit",
        type=int,
        default=PRINT_LIMIT,
        metavar="N",
        help="ids to print; 0: all (the total is always reported)",
    )
    _json_flag(a)
    a = action("rename", "give a concept another name (its view is renamed with it)", cmd_concept_rename)
    a.add_argument("name", help="the concept's name")
    a.add_argument("new_name", help="its new name")
    a = action("delete", "delete a concept and its view", cmd_concept_delete)
    a.add_argument("name", help="the concept's name")
    a = action(
        "retrain",
        "fit a stale concept again from its stored labels on the current codes",
        cmd_concept_retrain,
    )
    a.add_argument("name", help="the concept's name")
    _json_flag(a)
    a = action("export", "write a concept as a JSON file (- for stdout)", cmd_concept_export)
    a.add_argument("name", help="the concept's name")
    a.add_argument("file", help="the JSON file to write, or - for stdout")
    a = action("import", "save the concept of a JSON file written by export", cmd_concept_import)
    a.add_argument("file", help="a JSON file written by `concept export`")
    a.add_argument("--name", default=None, help="save it under this name instead of the file's")
    a.add_argument("--replace", action="store_true", help="replace a concept of that name")

    s = command("serve", "serve the search-and-refine web UI over one or more catalogs", cmd_serve)
    s.add_argument("catalogs", nargs="+", metavar="CATALOG", help="catalog files, opened read-only")
    s.add_argument(
        "--watch",
        action="append",
        default=[],
        metavar="DIR",
        help="take new and changed image files under DIR into the first catalog as they appear, and "
        "remove deleted ones (repeatable)",
    )
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=8000, help="port to listen on")
    s.add_argument(
        "--setting",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a web setting, e.g. --setting sql_time_limit_s 10 (repeatable; the settings are listed below)",
    )
    s.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="a web setting, as NAME=VALUE"
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
    s.add_argument(
        "--shards",
        type=int,
        default=None,
        metavar="N",
        help="write N subtrees of the k-d tree (a power of two, at most the blocks), one folder each",
    )
    _quiet_flag(s)
    _json_flag(s)

    s = command("import", "create a catalog from a Parquet export", cmd_import)
    s.add_argument("directory", help="a folder written by `clip-branches export`")
    s.add_argument("catalog", help="the new catalog file")
    _quiet_flag(s)
    return p


SCORED = ("search", "refine", "select")


def _settings_help() -> str:
    """The web settings ``serve --setting`` takes, with their defaults."""
    import textwrap
    from dataclasses import fields

    from web.settings import Settings

    lines = ["settings (--setting NAME VALUE, or --set NAME=VALUE):"]
    for f in fields(Settings):
        text = f"{f.name} = {f.default!r}: {f.metadata['help']}"
        lines += textwrap.wrap(text, 96, initial_indent="  ", subsequent_indent="      ")
    return "\n".join(lines)
