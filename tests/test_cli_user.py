"""The command line as a new user meets it: a folder of one's own made searchable, predictable
output, exit codes, closed pipes, errors that name the fix. Everything runs the real CLI."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import engine

pytestmark = pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists(),
    reason="needs the Debian package dataset-fashion-mnist",
)

CLI = [sys.executable, "-m", "engine"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def cli(*args, check=True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}: {r.stderr}")
    return r


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, list[dict]]:
    """600 Fashion-MNIST PNGs and their manifest rows (uri, label, split)."""
    from engine.datasets.demodata import write_fashion_mnist

    root = tmp_path_factory.mktemp("photos")
    manifest = write_fashion_mnist(root, limit=300)
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    return manifest, rows


def _folder(tmp_path: Path, photos, n: int) -> Path:
    """A flat folder of the first ``n`` images, named after their class."""
    manifest, rows = photos
    folder = tmp_path / f"mine-{n}"
    folder.mkdir()
    for i, row in enumerate(rows[:n]):
        label = row["label"].replace("/", "-").replace(" ", "-").lower()
        shutil.copy(manifest.parent / row["uri"], folder / f"{label}-{i:04d}.png")
    return folder


def _uris(path: Path) -> dict[int, str]:
    out = json.loads(cli("sql", path, "SELECT id, uri FROM images", "--json").stdout)
    return {r["id"]: Path(r["uri"]).name for r in out}


@pytest.mark.parametrize("n", [1, 20, 50])
def test_a_small_folder_becomes_searchable_with_one_command(tmp_path, photos, n):
    folder = _folder(tmp_path, photos, n)
    path = tmp_path / "mine.duckdb"
    r = cli("add", path, folder, "--workers", 0)
    assert f"{n} images searchable" in r.stdout and "Traceback" not in r.stderr
    found = json.loads(cli("search", path, "ankle boot", "--json").stdout)
    assert found["results"] == min(n, 60) and len(set(found["ids"])) == min(n, 60)
    names = _uris(path)
    if n >= 20:  # the folder holds ankle boots; one of them comes first
        assert names[found["ids"][0]].startswith("ankle-boot"), [names[i] for i in found["ids"][:5]]
    # more like the first result, then fine-tuning on it: both answer without an error
    like = json.loads(cli("search", path, "--id", found["ids"][0], "-k", 5, "--json").stdout)
    assert like["ids"][0] == found["ids"][0]
    refined = json.loads(cli("refine", path, "--positive", found["ids"][0], "--json").stdout)
    assert found["ids"][0] in refined["ids"]
    if n == 20:  # a catalog that doubles gets its head retrained on every image
        more = _folder(tmp_path, photos, 50)
        out = json.loads(cli("add", path, more, "--workers", 0, "--json", "--quiet").stdout)
        assert out["ingest"]["added"] == 50 and out["head"]["rows"] == 70 and out["index"]["rows"] == 70


def test_a_labelled_folder_of_600_images(tmp_path, photos):
    """The manifest brings the labels in; search finds the class, refine finds more of it; a
    second add of the same folder changes nothing and keeps the head."""
    manifest, rows = photos
    path = tmp_path / "labelled.duckdb"
    out = json.loads(cli("add", path, manifest, "--workers", 0, "--json", "--quiet").stdout)
    assert out["ingest"]["added"] == 600 and out["head"]["rows"] == 600 and out["index"]["rows"] == 600
    lines = cli("search", path, "ankle boot", "-k", 10).stdout.splitlines()
    assert lines[0] == "id\tscore\tlabel"
    labels = [line.split("\t")[2] for line in lines[1:]]
    assert labels.count("Ankle boot") >= 8, labels
    again = json.loads(cli("add", path, manifest, "--workers", 0, "--json", "--quiet").stdout)
    assert again["ingest"]["added"] == 0 and "head" not in again and "index" not in again


def test_ingest_says_what_comes_next(tmp_path, photos):
    path = tmp_path / "next.duckdb"
    folder = _folder(tmp_path, photos, 5)
    r = cli("ingest", path, folder, "--workers", 0, "--quiet")
    assert f"clip-branches train-head {path}" in r.stderr and f"clip-branches index {path}" in r.stderr
    assert "clip-branches add" in r.stderr
    # a removed image's path stays in the file's bytes until compact, and ingest says so
    gone = sorted(folder.iterdir())[2]
    gone.unlink()
    r = cli("ingest", path, folder, "--workers", 0, "--quiet")
    assert "1 removed" in r.stdout and f"clip-branches compact {path}" in r.stderr
    assert gone.name.encode() in path.read_bytes()
    cli("compact", path, "--quiet")
    assert gone.name.encode() not in path.read_bytes()
    assert len(_uris(path)) == 4


@pytest.fixture(scope="module")
def demo(web_demo_copy):
    return web_demo_copy()


def test_refine_twice_gives_the_same_ids(demo):
    first = json.loads(cli("search", demo, "sneaker", "--json").stdout)["ids"]
    args = (
        "refine",
        demo,
        "--positive",
        ",".join(map(str, first[:8])),
        "--negative",
        first[40],
        "--json",
        "--limit",
        0,
    )
    a, b = json.loads(cli(*args).stdout), json.loads(cli(*args).stdout)
    assert a["ids"] == b["ids"] and a["scores"] == b["scores"] and a["results"] == len(a["ids"]) > 8


def test_json_says_when_ids_are_capped_and_limit_sets_the_cap(demo):
    ids = json.loads(cli("search", demo, "sneaker", "--json").stdout)["ids"]
    args = ("refine", demo, "--positive", ",".join(map(str, ids[:8])), "--json")
    capped = cli(*args, "--limit", 3)
    out = json.loads(capped.stdout)
    assert out["ids_shown"] == 3 and out["ids_capped"] is True and len(out["ids"]) == 3 and out["results"] > 3
    assert "first 3 of" in capped.stderr
    full = json.loads(cli(*args, "--limit", 0).stdout)
    assert full["ids_capped"] is False and len(full["ids"]) == full["results"] == out["results"]
    assert full["ids"][:3] == out["ids"]


def test_sql_reaches_the_whole_refine_result(demo, tmp_path):
    ids = json.loads(cli("search", demo, "sneaker", "--json").stdout)["ids"]
    saved = tmp_path / "r.json"
    saved.write_text(
        cli("refine", demo, "--positive", ",".join(map(str, ids[:8])), "--json", "--limit", 2).stdout
    )
    full = json.loads(
        cli("refine", demo, "--positive", ",".join(map(str, ids[:8])), "--json", "--limit", 0).stdout
    )
    rows = json.loads(
        cli(
            "sql", demo, "SELECT id, score, rank FROM last_result ORDER BY rank", "--result", saved, "--json"
        ).stdout
    )
    assert [r["id"] for r in rows] == full["ids"] and [r["score"] for r in rows] == full["scores"]
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    # a query of its own WITH clause, and TSV with a header
    tsv = cli(
        "sql", demo, "WITH x AS (SELECT id FROM last_result) SELECT count(*) AS n FROM x", "--result", saved
    )
    assert tsv.stdout.splitlines() == ["n", str(len(full["ids"]))]
    bad = cli("sql", demo, "SELECT 1", "--result", tmp_path / "absent.json", check=False)
    assert bad.returncode == 1 and "cannot read the result file" in bad.stderr


def test_a_closed_pipe_ends_quietly(demo):
    """`... | head -1`: the reader goes away after a line; no traceback, exit 141 (SIGPIPE)."""
    ids = json.loads(cli("search", demo, "sneaker", "--json").stdout)["ids"]
    for args in (
        ["refine", demo, "--positive", ",".join(map(str, ids[:8])), "--limit", 0],
        ["sql", demo, "SELECT * FROM images, range(20)"],
        ["search", demo, "sneaker", "-k", 1000, "--json"],
    ):
        proc = subprocess.Popen(
            [*CLI, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV
        )
        proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read().decode()
        proc.wait(timeout=300)
        assert "Traceback" not in err and "BrokenPipe" not in err, err
        assert proc.returncode in (0, 141), (args, proc.returncode, err)
    # with a large output the pipe does close before the end
    proc = subprocess.run(
        f"{sys.executable} -m engine sql {demo} 'SELECT * FROM images, range(50)' | head -1",
        shell=True,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        executable="/bin/bash",
    )
    assert proc.stdout.startswith("id\t") and "Traceback" not in proc.stderr


def test_exit_codes_and_json_errors(demo, tmp_path):
    usage = cli("search", demo, check=False)
    assert usage.returncode == 2 and "give a text QUERY, --image FILE or --id N" in usage.stderr
    usage = cli("search", demo, "--json", check=False)
    assert usage.returncode == 2 and json.loads(usage.stdout)["error"]["type"] == "UsageError"
    usage = cli("refine", demo, "--json", check=False)  # --positive is required
    assert usage.returncode == 2 and "--positive" in json.loads(usage.stdout)["error"]["message"]
    fail = cli("search", demo, "--id", 10**9, check=False)
    assert fail.returncode == 1 and "unknown image id(s): 1000000000" in fail.stderr and fail.stdout == ""
    fail = cli("search", demo, "--id", 10**9, "--json", check=False)
    assert fail.returncode == 1 and json.loads(fail.stdout) == {
        "error": {"type": "UnknownIds", "message": "unknown image id(s): 1000000000"}
    }
    missing = cli("search", tmp_path / "none.duckdb", "shoe", check=False)
    assert missing.returncode == 1 and "clip-branches add" in missing.stderr and "ingest" in missing.stderr
    (tmp_path / "out").mkdir()
    exists = cli("export", demo, tmp_path / "out", check=False)
    assert exists.returncode == 1 and "--overwrite" in exists.stderr


def test_every_option_has_help_and_the_top_level_shows_examples():
    from engine.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.help == "==SUPPRESS==" or action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help line"
    top = cli("--help").stdout
    assert "clip-branches add photos.duckdb" in top and "exit status" in top and "scores:" in top
    refine = cli("refine", "--help").stdout
    for default in (
        "(default: ensemble)",
        "(default: 500)",
        "(default: 1.0)",
        "(default: 0)",
        "(default: 60)",
    ):
        assert default in refine


def _hold(path: Path, read_only: bool) -> subprocess.Popen:
    code = (
        "import duckdb, sys, time; con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == '1'); "
        "print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path), "1" if read_only else "0"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_errors_tell_a_reader_from_a_writer(demo, tmp_path):
    path = tmp_path / "locked.duckdb"
    shutil.copy(demo, path)
    reader = _hold(path, read_only=True)
    try:
        r = cli("migrate", path, check=False)
        assert r.returncode == 1 and "open read-only in another process" in r.stderr and "serve" in r.stderr
    finally:
        reader.kill()
        reader.wait()
    writer = _hold(path, read_only=False)
    try:
        r = cli("info", path, check=False)
        assert r.returncode == 1 and "open for writing in another process" in r.stderr
    finally:
        writer.kill()
        writer.wait()
    with engine.Catalog.open(path, read_only=True) as cat:  # nothing was harmed
        assert cat.index_status()["rows"] == 1000
