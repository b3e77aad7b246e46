"""The declared tables of limits and defaults (``engine.limits.LIMITS``, ``web.settings.Settings``)
are what the code, the CLI, the web app and the README use."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

import engine
from engine import limits
from engine.cli import build_parser
from engine.errors import InvalidArgument
from web import Settings, bodies

README = Path(__file__).resolve().parent.parent / "README.md"
ROW = re.compile(r"^\| `([a-z0-9_]+)` \| (.+?) \| (.+?) \|$")


def _documented() -> dict[str, tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Limits and defaults", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


def expected_rows() -> dict[str, tuple[str, str]]:
    rows = {name: (f"`{limits.documented(lim.value)}`", lim.help) for name, lim in limits.LIMITS.items()}
    for f in fields(Settings):
        rows[f.name] = (f"`{limits.documented(f.default)}`", f"server setting: {f.metadata['help']}")
    return rows


def test_the_readme_lists_every_limit_and_setting_with_its_value():
    assert _documented() == expected_rows()


def test_limit_names_are_unique_across_the_two_tables():
    assert not set(limits.LIMITS) & {f.name for f in fields(Settings)}


def test_the_code_uses_the_declared_values():
    import inspect

    from engine import sandbox
    from engine.index import layout, search
    from engine.learn import refine

    assert search.MAX_K is limits.MAX_K and sandbox.MAX_QUERY_TEXT is limits.MAX_QUERY_TEXT
    assert layout.DEFAULT_BLOCK_SIZE == limits.DEFAULT_BLOCK_SIZE
    assert refine.MAX_SAMPLED_NEGATIVES == limits.MAX_SAMPLED_NEGATIVES
    refine_defaults = inspect.signature(engine.Catalog.refine).parameters
    assert refine_defaults["sampled_negatives"].default == limits.DEFAULT_SAMPLED_NEGATIVES
    assert refine_defaults["suggestions"].default == limits.DEFAULT_SUGGESTIONS
    assert inspect.signature(engine.Catalog.search).parameters["k"].default == limits.DEFAULT_K
    assert bodies.MAX_K == limits.WEB_MAX_K and bodies.MAX_SAMPLED == limits.WEB_MAX_SAMPLED


def test_cli_defaults_are_the_declared_ones():
    parser = build_parser()
    search = parser.parse_args(["search", "c.duckdb", "boots"])
    refine = parser.parse_args(["refine", "c.duckdb", "--positive", "1"])
    assert search.k == limits.DEFAULT_K and refine.limit == limits.PRINT_LIMIT
    assert refine.sampled_negatives == limits.DEFAULT_SAMPLED_NEGATIVES
    assert refine.suggestions == limits.DEFAULT_SUGGESTIONS


def test_serve_takes_settings_as_name_value_pairs():
    args = build_parser().parse_args(
        ["serve", "c.duckdb", "--setting", "sql_max_rows", "7", "--set", "max_labels=9"]
    )
    assert args.setting == [["sql_max_rows", "7"]] and args.set == ["max_labels=9"]
    settings = Settings.parse([f"{n}={v}" for n, v in args.setting] + args.set)
    assert (settings.sql_max_rows, settings.max_labels) == (7, 9)


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("no_such_setting=1", "NAME one of page_size"),
        ("sql_max_rows=many", "'many' is not a valid int"),
        ("sql_time_limit_s=0", "must be positive"),
        ("sql_max_rows", "a setting takes a NAME and a VALUE"),
    ],
)
def test_a_bad_setting_is_refused_with_what_to_give(given, says):
    with pytest.raises(InvalidArgument, match=re.escape(says)):
        Settings.parse([given])
