"""The clip-branches command, run as a subprocess over real files."""

import json
import os
import subprocess
import sys

import duckdb
import numpy as np
import pytest

import engine

CLI = [sys.executable, "-m", "engine"]


def run(*args, check=True, stdin=None):
    proc = subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "s.duckdb"
    run("synth", path, "--rows", 5000, "--seed", 3, "--block-size", 128)
    return path


def test_console_script_is_installed():
    proc = subprocess.run(
        ["clip-branches", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]},
    )
    assert proc.returncode == 0 and "select" in proc.stdout


def test_select_json_matches_api_and_sql(synth, tmp_path):
    boxes = {"boxes": [{"3": [40, 160], "f07": [0, 130]}, {"1": [90, 255]}], "members": [0, 1]}
    f = tmp_path / "b.json"
    f.write_text(json.dumps(boxes))
    out = json.loads(run("select", synth, "--boxes", f, "--json", "--limit", 0).stdout)
    with engine.Catalog.open(synth, read_only=True) as cat:
        res = cat.select(engine.BoxSet.from_json(boxes))
    assert out["ids"] == res.ids.tolist() and out["votes"] == res.votes.tolist() and out["sql"] == res.sql
    assert set(out["stats"]) >= {"blocks_touched", "rows_tested", "time_prune_ms", "time_scan_ms"}
    got = duckdb.connect(str(synth), read_only=True).execute(out["sql"]).fetchall()
    assert [r[0] for r in got] == out["ids"] and len(out["ids"]) > 0


def test_select_reads_boxes_from_stdin(synth):
    out = json.loads(
        run("select", synth, "--boxes", "-", "--json", "--limit", 0, stdin='[{"0": [0, 255]}]').stdout
    )
    assert len(out["ids"]) == 5000


@pytest.mark.parametrize(
    "text,message",
    [
        ("{not json", "not valid JSON"),
        ('[{"40": [1, 2]}]', "out of range"),
        ('[{"1": [9, 2]}]', "lo 9 > hi 2"),
        ('{"boxes": [{"1": [0, 2]}], "members": [0, 1]}', "one per box"),
    ],
)
def test_bad_box_files_give_one_line_errors(synth, tmp_path, text, message):
    f = tmp_path / "bad.json"
    f.write_text(text)
    proc = run("select", synth, "--boxes", f, check=False)
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""
    proc = run("select", synth, "--boxes", f, "--json", check=False)  # the same error, as JSON on stdout
    err = json.loads(proc.stdout)["error"]
    assert proc.returncode == 1 and err["type"] == "InvalidBoxes" and message in err["message"]
    assert proc.stderr == ""


def test_missing_files_give_clear_errors(tmp_path):
    proc = run("select", tmp_path / "nope.duckdb", "--boxes", tmp_path / "b.json", check=False)
    assert proc.returncode == 1 and "cannot read box file" in proc.stderr
    (tmp_path / "b.json").write_text("[]")
    proc = run("select", tmp_path / "nope.duckdb", "--boxes", tmp_path / "b.json", check=False)
    assert proc.returncode == 1 and "no catalog at" in proc.stderr and "Traceback" not in proc.stderr


def test_sql_command_and_refusal(synth):
    out = json.loads(run("sql", synth, "SELECT count(*) AS n FROM catalog WHERE label = 0", "--json").stdout)
    assert out[0]["n"] > 0
    proc = run("sql", synth, "DELETE FROM images", check=False)
    assert proc.returncode == 1 and "only queries" in proc.stderr
    assert json.loads(run("sql", synth, "SELECT count(*) AS n FROM images", "--json").stdout)[0]["n"] == 5000


def test_export_import_round_trip(synth, tmp_path):
    run("export", synth, tmp_path / "pq")
    run("import", tmp_path / "pq", tmp_path / "back.duckdb")
    f = tmp_path / "b.json"
    f.write_text('{"boxes": [{"2": [50, 140]}, {"5": [0, 99], "6": [99, 255]}], "members": [0, 1]}')
    a = json.loads(run("select", synth, "--boxes", f, "--json", "--limit", 0).stdout)
    b = json.loads(run("select", tmp_path / "back.duckdb", "--boxes", f, "--json", "--limit", 0).stdout)
    assert a["ids"] == b["ids"] and a["votes"] == b["votes"]


def test_export_in_shards_and_bad_shard_counts(synth, tmp_path):
    out = json.loads(run("export", synth, tmp_path / "pq", "--shards", 4, "--json", "--quiet").stdout)
    assert [s["directory"] for s in out["shards"]] == [f"shard-{i:03d}" for i in range(4)]
    assert sum(s["rows"] for s in out["shards"]) == out["rows"] == 5000
    assert (
        "in 2 shards" in run("export", synth, tmp_path / "pq", "--shards", 2, "--overwrite", "--quiet").stdout
    )
    proc = run("export", synth, tmp_path / "bad", "--shards", 3, check=False)
    assert proc.returncode == 1 and "shards must be a power of two" in proc.stderr
    assert not (tmp_path / "bad").exists()
    proc = run("refine", synth, "--positive", 1, "--out", tmp_path / "r", check=False)
    assert proc.returncode == 2 and "--out and --overwrite go with --spark" in proc.stderr


def test_create_index_info(tmp_path):
    path = tmp_path / "c.duckdb"
    run("create", path)
    with engine.Catalog.open(path) as cat:
        cat.add_codes(np.random.default_rng(0).integers(0, 256, (1000, 32), dtype=np.uint8))
    info = json.loads(run("info", path, "--json").stdout)
    assert info["rows"] == 1000 and info["stale"] is True
    run("index", path, "--block-size", 64, "--compact")
    info = json.loads(run("info", path, "--json").stdout)
    assert info["stale"] is False and info["index"]["n_blocks"] == 16
    proc = run("create", path, check=False)
    assert proc.returncode == 1 and "already exists" in proc.stderr


@pytest.mark.parametrize("block_size", [1, 0, -5])
def test_bad_block_size_is_an_invalid_argument_and_exit_1(tmp_path, block_size):
    path = tmp_path / "c.duckdb"
    run("create", path)
    with engine.Catalog.open(path) as cat:
        cat.add_codes(np.random.default_rng(0).integers(0, 256, (100, 32), dtype=np.uint8))
    message = f"block_size must be an integer >= 2, got {block_size}"
    proc = run("index", path, "--block-size", block_size, check=False)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    proc = run("index", path, "--block-size", block_size, "--json", check=False)
    err = json.loads(proc.stdout)["error"]
    assert proc.returncode == 1 and err == {"type": "InvalidArgument", "message": message}
    assert json.loads(run("info", path, "--json").stdout)["stale"] is True


def test_refine_is_reproducible_by_default_and_help_shows_defaults(synth):
    with engine.Catalog.open(synth, read_only=True) as cat:
        labels = cat.sql("SELECT id, label FROM images ORDER BY id")
        ids, lab = labels.column("id").to_numpy(), labels.column("label").to_numpy()
        positives = ids[lab == lab[0]][:8]
        expected = cat.refine(positives, random_state=0)
    args = ["refine", synth, "--positive", ",".join(map(str, positives)), "--json", "--limit", 100_000]
    first, second = (json.loads(run(*args).stdout) for _ in range(2))
    assert first["ids"] == second["ids"] == expected.ids.tolist() and first["results"] == len(expected.ids)
    helptext = " ".join(run("refine", "--help").stdout.split())
    for default in (
        "(default: ensemble)",
        "(default: 500)",
        "(default: 1.0)",
        "(default: 0)",
        "(default: 60)",
    ):
        assert default in helptext


def test_long_commands_print_progress_lines_on_a_pipe_and_quiet_silences_them(tmp_path):
    """On a pipe (not a terminal) progress is plain lines on stderr ending in a "done" line; no
    carriage returns. --quiet prints none."""
    import re

    path = tmp_path / "p.duckdb"
    r = run("synth", path, "--rows", 20000, "--block-size", 256)
    assert re.search(r"^index: (\d+)/\1 steps, .*done in \d+ s$", r.stderr, re.M), r.stderr
    assert "\r" not in r.stderr
    for args, label in (
        (["index", path], "index"),
        (["export", path, tmp_path / "pq"], "export"),
        (["import", tmp_path / "pq", tmp_path / "back.duckdb"], "import"),
        (["compact", path], "compact"),
    ):
        r = run(*args)
        assert re.search(rf"^{label}: (\d+)/\1 \w+, .*done in \d+ s$", r.stderr, re.M), (label, r.stderr)
        again = {"export": ["--overwrite"], "import": None}.get(label, [])
        if again is not None:
            assert run(*args, *again, "--quiet").stderr == "", label
    assert run("synth", tmp_path / "q.duckdb", "--rows", 2000, "--quiet").stderr == ""
