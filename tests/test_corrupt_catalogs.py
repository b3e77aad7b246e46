"""Damaged catalogs: every command run on one ends in a CorruptCatalog that names the damage and
the repair (exit status 1, the message as JSON under --json, no traceback), and leaves the file
as it was.

Each test damages a fresh copy of one small synthetic catalog: truncated, a block overwritten
with random bytes (DuckDB notices only when a query reads that block), a table or column gone,
settings holding what clip-branches never writes, or a file that is no DuckDB database at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

import engine
from engine import CorruptCatalog
from engine.cli import main
from engine.datasets.synth import synth_catalog

ROWS = 2000
BLOCK_SIZE = 64
# DuckDB's file starts with a file header and two database headers of 4 KiB each; block i follows at
# HEADER_BYTES + i * block_size.
HEADER_BYTES = 3 * 4096
RESTORE = ("from a backup", "clip-branches import")


def _sql(path: Path, *statements: str) -> None:
    con = duckdb.connect(str(path))
    try:
        for statement in statements:
            con.execute(statement)
    finally:
        con.close()


def _truncate(fraction: float | None = None, size: int | None = None):
    def damage(path: Path) -> None:
        os.truncate(path, size if size is not None else int(path.stat().st_size * fraction))

    return damage


def _overwrite_block_of(table: str):
    """Overwrite 4 KiB in the middle of the first block holding ``table``'s rows with random bytes."""

    def damage(path: Path) -> None:
        con = duckdb.connect(str(path), read_only=True)
        try:
            block_size = con.execute("SELECT block_size FROM pragma_database_size()").fetchall()[0][0]
            block = con.execute(
                f"SELECT min(block_id) FROM pragma_storage_info('{table}') WHERE block_id >= 0"
            ).fetchall()[0][0]
        finally:
            con.close()
        with open(path, "r+b") as f:
            f.seek(HEADER_BYTES + block * block_size + block_size // 2)
            f.write(np.random.default_rng(0).bytes(4096))

    return damage


def _setting(key: str, text: str):
    return lambda path: _sql(path, f"INSERT OR REPLACE INTO settings VALUES ('{key}', '{text}')")


def _index_entry(name: str, value):
    def damage(path: Path) -> None:
        con = duckdb.connect(str(path))
        try:
            index = json.loads(con.execute("SELECT value FROM settings WHERE key = 'index'").fetchall()[0][0])
            index[name] = value
            con.execute("UPDATE settings SET value = ? WHERE key = 'index'", [json.dumps(index)])
        finally:
            con.close()

    return damage


def _png(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(path, format="PNG")


NOT_DUCKDB = ("not a DuckDB database file", "Check the path")
# kind: (damage, words the message must hold about the damage, words naming the repair)
DAMAGE = {
    "truncated-half": (_truncate(fraction=0.5), ("is truncated",), RESTORE),
    "truncated-1000-bytes": (_truncate(size=1000), ("is truncated",), RESTORE),
    "codes-block-overwritten": (_overwrite_block_of("codes"), ("is damaged",), RESTORE),
    "settings-block-overwritten": (_overwrite_block_of("settings"), ("is damaged",), RESTORE),
    "blocks-table-dropped": (lambda p: _sql(p, "DROP TABLE blocks"), ("has no blocks table",), RESTORE),
    "codes-table-dropped": (lambda p: _sql(p, "DROP TABLE codes"), ("has no codes table",), RESTORE),
    "codes-column-dropped": (
        lambda p: _sql(p, "ALTER TABLE codes DROP COLUMN f05"),
        ("the codes table has no column f05",),
        RESTORE,
    ),
    "codes-column-retyped": (
        lambda p: _sql(p, "ALTER TABLE codes ALTER COLUMN f05 SET DATA TYPE VARCHAR"),
        ("column codes.f05 is VARCHAR", "UTINYINT"),
        RESTORE,
    ),
    "index-setting-a-string": (
        _setting("index", '"garbage"'),
        ("setting 'index'", "'garbage'"),
        ("clip-branches index",),
    ),
    "index-setting-malformed-json": (
        _setting("index", "{not json"),
        ("setting 'index'", "not valid JSON"),
        ("clip-branches index",),
    ),
    "index-block-size-a-string": (
        _index_entry("block_size", "big"),
        ("setting 'index'", "block_size = 'big'"),
        ("clip-branches index",),
    ),
    "data-version-a-string": (
        _setting("data_version", '"seven"'),
        ("setting 'data_version'", "'seven'"),
        ("clip-branches index",),
    ),
    "head-setting-a-list": (
        _setting("head", "[1, 2]"),
        ("setting 'head'", "[1, 2]"),
        ("clip-branches train-head",),
    ),
    "blocks-do-not-tile": (
        lambda p: _sql(p, "UPDATE blocks SET row_start = row_start + 1 WHERE block_id = 3"),
        ("block 3 holds rows",),
        ("clip-branches index",),
    ),
    "text-file": (lambda p: p.write_text("this is not a catalog\n" * 100), NOT_DUCKDB, RESTORE),
    "empty-file": (lambda p: p.write_bytes(b""), NOT_DUCKDB, RESTORE),
    "png-file": (_png, NOT_DUCKDB, RESTORE),
}
COMMANDS = {
    "info": ["info", "{path}"],
    "search": ["search", "{path}", "--id", "3", "-k", "5"],
    "refine": ["refine", "{path}", "--positive", "1,2,3", "--negative", "4", "--sampled-negatives", "50"],
    "select": ["select", "{path}", "--boxes", "{boxes}"],
}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.duckdb"
    synth_catalog(path, ROWS, seed=5, block_size=BLOCK_SIZE)
    return path


@pytest.fixture(scope="module")
def boxes(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("boxes") / "boxes.json"
    path.write_text('[{"0": [0, 200], "3": [40, 255]}]')
    return path


@pytest.fixture
def damaged(template, tmp_path):
    """Factory: ``damaged(kind)`` is a fresh copy of the template, damaged as ``DAMAGE[kind]`` says."""

    def make(kind: str) -> Path:
        path = tmp_path / f"{kind}.duckdb"
        shutil.copy(template, path)
        DAMAGE[kind][0](path)
        assert not Path(f"{path}.wal").exists()
        return path

    return make


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def argv(command: str, path: Path, boxes: Path, *extra: str) -> list[str]:
    return [a.format(path=path, boxes=boxes) for a in COMMANDS[command]] + list(extra)


def assert_names_damage_and_repair(message: str, path: Path, kind: str) -> None:
    _, problem, repair = DAMAGE[kind]
    assert str(path) in message, message
    for words in (*problem, *repair):
        assert words in message, f"{words!r} not in {message!r}"


def assert_untouched(path: Path, digest: str) -> None:
    assert sha256(path) == digest
    assert not Path(f"{path}.wal").exists()


# -- the CLI -----------------------------------------------------------------------------------
@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("kind", list(DAMAGE))
def test_cli_names_the_damage_and_the_repair(damaged, boxes, capsys, kind, command):
    path = damaged(kind)
    digest = sha256(path)
    assert main(argv(command, path, boxes)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("clip-branches: error: ") and err.count("\n") == 1, err
    assert_names_damage_and_repair(err, path, kind)

    assert main(argv(command, path, boxes, "--json")) == 1
    out, err = capsys.readouterr()
    assert err == ""
    error = json.loads(out)["error"]
    assert error["type"] == "CorruptCatalog"
    assert_names_damage_and_repair(error["message"], path, kind)
    assert_untouched(path, digest)


@pytest.mark.e2e
def test_cli_subprocess_prints_no_traceback(damaged, boxes):
    """The real entry point, as a user runs it: one line on stderr, exit status 1."""
    for kind, args in [
        ("truncated-half", ["info", "{path}"]),
        ("index-setting-a-string", ["select", "{path}", "--boxes", "{boxes}", "--json"]),
    ]:
        path = damaged(kind)
        digest = sha256(path)
        proc = subprocess.run(
            [sys.executable, "-m", "engine", *(a.format(path=path, boxes=boxes) for a in args)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        message = json.loads(proc.stdout)["error"]["message"] if "--json" in args else proc.stderr
        assert_names_damage_and_repair(message, path, kind)
        assert_untouched(path, digest)


# -- the web app -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(DAMAGE))
def test_web_app_refuses_to_start(damaged, kind):
    import web

    path = damaged(kind)
    digest = sha256(path)
    with pytest.raises(CorruptCatalog) as info:
        web.create_app([path])
    assert_names_damage_and_repair(str(info.value), path, kind)
    # The failed start released the file: opening it with another configuration meets the damage,
    # not "already open in this process".
    with pytest.raises(CorruptCatalog), engine.Catalog.open(path, read_only=True) as cat:
        cat.block_index()
    assert_untouched(path, digest)


def test_web_app_releases_every_catalog_when_one_is_damaged(template, damaged, tmp_path):
    import web

    good = tmp_path / "good.duckdb"
    shutil.copy(template, good)
    bad = damaged("index-setting-a-string")
    with pytest.raises(CorruptCatalog) as info:
        web.create_app([good, bad])
    with engine.Catalog.open(good) as cat:  # writable, while the failure is still at hand: no reader holds it
        assert len(cat) == ROWS
    assert_names_damage_and_repair(str(info.value), bad, "index-setting-a-string")


@pytest.mark.parametrize("kind", ["truncated-half", "index-setting-a-string", "png-file"])
def test_cli_serve_exits_with_the_message(damaged, capsys, kind):
    pytest.importorskip("uvicorn")
    path = damaged(kind)
    assert main(["serve", str(path), "--port", "1"]) == 1
    out, err = capsys.readouterr()
    assert "serving" not in out
    assert err.startswith("clip-branches: error: ") and "Traceback" not in err
    assert_names_damage_and_repair(err, path, kind)


# -- what the damage does not reach, and repairs -------------------------------------------------
def test_damaged_images_block_fails_only_what_reads_it(template, boxes, capsys, tmp_path):
    """A block of image metadata that fails its checksum is met by the first query reading it
    (info's counts, search's labels); a selection, which reads only the codes, still answers."""
    import web

    path = tmp_path / "images-block-overwritten.duckdb"
    shutil.copy(template, path)
    _overwrite_block_of("images")(path)
    digest = sha256(path)
    for command in ("info", "search"):
        assert main(argv(command, path, boxes)) == 1
        _, err = capsys.readouterr()
        assert str(path) in err and "is damaged" in err and all(w in err for w in RESTORE), err
    with engine.Catalog.open(path, read_only=True) as cat, pytest.raises(CorruptCatalog, match="is damaged"):
        cat.sql("SELECT * FROM images")  # a user's query too: CorruptCatalog, not InvalidSql

    assert main(argv("select", path, boxes, "--json", "--limit", "0")) == 0
    selected = json.loads(capsys.readouterr().out)
    assert main(argv("select", template, boxes, "--json", "--limit", "0")) == 0
    expected = json.loads(capsys.readouterr().out)
    assert selected["ids"] == expected["ids"] and len(expected["ids"]) > 0
    from litestar.testing import TestClient

    with TestClient(web.create_app([path], warm_up=False)) as client:
        r = client.get(f"/thumb/{path.stem}/{expected['ids'][0]}")  # reads the image's row
        assert r.status_code == 500 and "is damaged" in r.json()["detail"], r.text
    assert_untouched(path, digest)


@pytest.mark.parametrize(
    "kind",
    [
        "truncated-half",
        "truncated-1000-bytes",
        "blocks-table-dropped",
        "codes-column-dropped",
        "settings-block-overwritten",
        "text-file",
    ],
)
def test_writable_open_refuses_and_writes_nothing(damaged, kind):
    path = damaged(kind)
    digest = sha256(path)
    with pytest.raises(CorruptCatalog) as info:
        cat = engine.Catalog.open(path)
        try:
            cat.setting("index")
        finally:
            cat.close()
    assert_names_damage_and_repair(str(info.value), path, kind)
    assert_untouched(path, digest)


def test_index_on_damaged_codes_refuses_and_writes_nothing(damaged, capsys):
    path = damaged("codes-block-overwritten")
    digest = sha256(path)
    assert main(["index", str(path), "--quiet"]) == 1
    _, err = capsys.readouterr()
    assert_names_damage_and_repair(err, path, "codes-block-overwritten")
    assert_untouched(path, digest)


@pytest.mark.parametrize(
    "kind",
    [
        "index-setting-a-string",
        "index-setting-malformed-json",
        "index-block-size-a-string",
        "data-version-a-string",
        "blocks-do-not-tile",
    ],
)
def test_the_repair_named_rebuilds_the_index(template, damaged, boxes, capsys, kind):
    path = damaged(kind)
    assert main(["index", str(path), "--block-size", str(BLOCK_SIZE), "--quiet"]) == 0
    capsys.readouterr()
    assert main(argv("select", path, boxes, "--json", "--limit", "0")) == 0
    repaired = json.loads(capsys.readouterr().out)
    assert main(argv("select", template, boxes, "--json", "--limit", "0")) == 0
    assert repaired["ids"] == json.loads(capsys.readouterr().out)["ids"]
    assert main(["info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["indexed_rows"] == ROWS


def test_catalog_imported_from_a_crafted_export(template, boxes, capsys, tmp_path):
    """An export whose catalog.json carries settings clip-branches never writes imports, and each
    command on the result then names the setting and its repair."""
    export = tmp_path / "export"
    assert main(["export", str(template), str(export), "--quiet"]) == 0
    meta = json.loads((export / "catalog.json").read_text())
    meta["settings"]["index"]["feature_subsets"] = "every dim"
    meta["settings"]["head"] = "garbage"
    (export / "catalog.json").write_text(json.dumps(meta))
    path = tmp_path / "imported.duckdb"
    assert main(["import", str(export), str(path), "--quiet"]) == 0
    capsys.readouterr()
    for command in COMMANDS:
        assert main(argv(command, path, boxes, "--json")) == 1
        error = json.loads(capsys.readouterr().out)["error"]
        assert error["type"] == "CorruptCatalog"
        assert "setting 'head' holds 'garbage'" in error["message"]  # settings are checked in key order
        assert "clip-branches train-head" in error["message"]
    with pytest.raises(CorruptCatalog, match="feature_subsets"), engine.Catalog.open(path) as cat:
        cat.setting("index")  # a writable catalog checks each setting as it is read


@pytest.mark.parametrize("kind", ["truncated-half", "codes-block-overwritten"])
def test_export_and_compact_of_a_damaged_file_name_it_and_leave_nothing(damaged, capsys, tmp_path, kind):
    path = damaged(kind)
    digest = sha256(path)
    out = tmp_path / "export"
    assert main(["export", str(path), str(out), "--quiet"]) == 1
    _, err = capsys.readouterr()
    assert_names_damage_and_repair(err, path, kind) and "Traceback" not in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}.")]
    assert main(["compact", str(path), "--quiet"]) == 1
    _, err = capsys.readouterr()
    assert_names_damage_and_repair(err, path, kind) and "Traceback" not in err
    assert not [p for p in path.parent.iterdir() if ".compacting" in p.name]
    assert_untouched(path, digest)
