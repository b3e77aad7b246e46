"""The ``clip-branches`` command: :func:`main` parses the command line
(:mod:`engine.cli.parser`) and runs one subcommand (:mod:`engine.cli.commands`), turning a
:class:`~engine.errors.CatalogError` into a message that names the fix and exit status 1."""

from __future__ import annotations

import os
import sys

from ..errors import CatalogError
from .commands import EXIT_FAILURE, EXIT_PIPE, print_json
from .parser import CommandParser, build_parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    CommandParser.json_errors = "--json" in argv
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CatalogError as e:
        if getattr(args, "json", False):
            print_json({"error": {"type": type(e).__name__, "message": str(e)}})
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
