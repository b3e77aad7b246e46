"""A catalog that grows while it is served: `clip-branches ingest` on a served catalog through
the real CLI, `serve --watch`, readers beside the server, and saved concepts classifying the
new images, all against a real server over HTTP."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageOps
from test_concepts import plain_duckdb

import engine

CLI = [sys.executable, "-m", "engine"]
ARRIVAL_S = 60.0  # generous for CI; the measured figure comes from scripts/bench_live.py


@pytest.fixture
def live_copy(web_demo, tmp_path):
    """A copy of the demo catalog with a side folder of its own (ingestion writes there)."""
    path = tmp_path / web_demo.name
    shutil.copy(web_demo, path)
    shutil.copytree(f"{web_demo}.d", f"{path}.d", symlinks=True)
    return path


def new_images(web_demo, folder, n, start=0):
    """``n`` new image files: demo images mirrored (new bytes, the same kind of garment)."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((web_demo.parent / "fashion-mnist" / "images").rglob("*.png"))[start : start + n]
    out = []
    for src in sources:
        dst = folder / f"new-{src.stem}.png"
        ImageOps.mirror(Image.open(src)).save(dst)
        out.append(dst)
    return out


def get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def health(url):
    return next(iter(get(url + "/api/health")["catalogs"].values()))


def cli(*args, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def ids_of(path, uris):
    rows = plain_duckdb(path, "SELECT id, uri FROM images")["rows"]
    by_uri = {u: i for i, u in rows}
    return [by_uri.get(str(u)) for u in uris]


def wait_for(check, timeout):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_ingest_into_a_served_catalog(live_copy, web_demo, serve, tmp_path):
    files = new_images(web_demo, tmp_path / "arrivals", 40)
    with serve(live_copy, "--set", "fold_idle_s=3600") as (url, _):  # no folding during the checks
        before = health(url)
        # A reader beside the server: DuckDB alone, on the file the server holds.
        assert plain_duckdb(live_copy, "SELECT count(*) FROM images")["rows"] == [[before["rows"]]]

        proc = cli("ingest", live_copy, tmp_path / "arrivals", "--quiet")
        assert proc.returncode == 0, proc.stderr
        assert "40 added" in proc.stdout and "40 searchable now" in proc.stdout
        after = health(url)
        assert after["rows"] == before["rows"] + 40 and after["version"] > before["version"]
        assert after["pending"] == 0 and after["status"] == ""

        new = ids_of(live_copy, files)
        assert None not in new
        # Searchable over HTTP without a restart: by id, and an image finds its own kind.
        nearest = get(f"{url}/api/search?id={new[0]}&k=5")
        assert nearest["ids"][0] == new[0] or new[0] in nearest["ids"]
        text = get(f"{url}/api/search?q=sneaker&k=1000")
        assert set(new) & set(text["ids"])
        # info beside the server says they are outside the k-d order until `index`.
        info = json.loads(cli("info", live_copy, "--json").stdout)
        assert info["unindexed_rows"] == 40

        # The same folder again: nothing new, nothing duplicated.
        again = cli("ingest", live_copy, tmp_path / "arrivals", "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["added"] == 0
        assert health(url)["rows"] == after["rows"]
    with engine.Catalog.open(live_copy, read_only=True) as cat:
        assert len(cat) == after["rows"]
        assert cat.sql("SELECT count(*) - count(DISTINCT uri) AS d FROM images").column("d").to_pylist() == [
            0
        ]


def test_serve_watch_takes_new_files_in_and_removes_deleted_ones(live_copy, web_demo, serve, tmp_path):
    watched = tmp_path / "watched"
    watched.mkdir()
    with serve(live_copy, "--watch", watched, "--set", "fold_idle_s=3") as (url, _):
        rows = health(url)["rows"]
        files = new_images(web_demo, watched, 12, start=100)
        assert wait_for(lambda: health(url)["rows"] == rows + 12, ARRIVAL_S), health(url)
        new = ids_of(live_copy, files)
        assert None not in new
        assert new[3] in get(f"{url}/api/search?id={new[3]}&k=3")["ids"]
        for f in files[:5]:
            f.unlink()
        assert wait_for(lambda: health(url)["rows"] == rows + 7, ARRIVAL_S), health(url)
        assert ids_of(live_copy, files[:5]) == [None] * 5
        # A broken file is skipped and reported, and does not stop the watch.
        (watched / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
        new_images(web_demo, watched, 2, start=200)
        assert wait_for(lambda: health(url)["rows"] == rows + 9, ARRIVAL_S), health(url)
        skipped = plain_duckdb(live_copy, "SELECT uri FROM skipped")["rows"]
        assert [str(watched / "broken.png")] in skipped

        # Idle for fold_idle_s: the server folds the new rows into the k-d order itself.
        def folded():
            return json.loads(cli("info", live_copy, "--json").stdout)["unindexed_rows"] == 0

        assert wait_for(folded, ARRIVAL_S)
        assert new[-1] in get(f"{url}/api/search?id={new[-1]}&k=3")["ids"]


def test_a_saved_concept_classifies_images_as_they_arrive(live_copy, web_demo, serve, tmp_path):
    with engine.Catalog.open(live_copy) as cat:
        sneakers = cat.sql("SELECT id FROM images WHERE label = 'Sneaker' ORDER BY id LIMIT 8").column("id")
        result = cat.refine(sneakers.to_pylist(), random_state=0)
        cat.save_concept("sneakers", result)
    sneaker_files = plain_duckdb(
        live_copy, "SELECT uri FROM images WHERE label = 'Sneaker' ORDER BY id LIMIT 30 OFFSET 8"
    )["rows"]
    arrivals = tmp_path / "arrivals"
    arrivals.mkdir()
    for k, (uri,) in enumerate(sneaker_files):
        ImageOps.mirror(Image.open(uri)).save(arrivals / f"sneaker-{k}.png")
    with serve(live_copy) as (url, _):
        before = [r[0] for r in plain_duckdb(live_copy, "SELECT id FROM concept_sneakers")["rows"]]
        assert cli("ingest", live_copy, arrivals, "--quiet").returncode == 0
        view = [r[0] for r in plain_duckdb(live_copy, "SELECT id FROM concept_sneakers")["rows"]]
        new = ids_of(live_copy, sorted(arrivals.iterdir()))
        assert set(view) - set(before) <= set(new)
        assert len(set(view) & set(new)) >= len(new) // 2  # most mirrored sneakers are sneakers
        fresh = [r[0] for r in plain_duckdb(live_copy, "SELECT id FROM concept_new('sneakers')")["rows"]]
        assert set(fresh) == set(view) & set(new)
    with engine.Catalog.open(live_copy, read_only=True) as cat:
        assert cat.concepts.result("sneakers").ids.tolist() == view


def test_ingest_while_served_reports_bad_input_and_loses_nothing(live_copy, serve, tmp_path):
    with serve(live_copy) as (url, _):
        rows = health(url)["rows"]
        proc = cli("ingest", live_copy, tmp_path / "no-such-folder")
        assert proc.returncode == 1 and "no-such-folder" in proc.stderr
        proc = cli("ingest", live_copy, tmp_path, "--encoder", "open_clip:ViT-B-32/none")
        assert proc.returncode == 1 and "mix" in proc.stderr
        assert health(url)["rows"] == rows
    assert not list(Path(f"{live_copy}.d/inbox").glob(".writing-*"))


def test_a_new_head_makes_concepts_stale_until_retrained(live_copy):
    with engine.Catalog.open(live_copy) as cat:
        boots = cat.sql("SELECT id FROM images WHERE label = 'Ankle boot' ORDER BY id LIMIT 8").column("id")
        cat.save_concept("boots", cat.refine(boots.to_pylist(), random_state=0))
        space = cat.setting("codes_space")
    # A head trained afresh stores new weights; the codes change only with `index`.
    assert cli("train-head", live_copy, "--method", "pca", "--seed", "5", "--quiet").returncode == 0
    with engine.Catalog.open(live_copy, read_only=True) as cat:
        assert not cat.concept("boots").stale  # the codes are still the old head's
    assert cli("index", live_copy).returncode == 0
    with engine.Catalog.open(live_copy, read_only=True) as cat:
        assert cat.setting("codes_space") != space
        assert cat.concept("boots").stale
        with pytest.raises(engine.StaleConcept):
            cat.concepts.result("boots")
    assert "stale" in plain_duckdb(live_copy, "SELECT * FROM concept_boots")["error"]
    listed = json.loads(cli("concept", "list", live_copy, "--json").stdout)["concepts"]
    assert listed[0]["stale"]
    assert cli("concept", "retrain", live_copy, "boots").returncode == 0
    with engine.Catalog.open(live_copy, read_only=True) as cat:
        concept = cat.concept("boots")
        assert not concept.stale and concept.codes_space == cat.setting("codes_space")
        ids = cat.concepts.result("boots").ids.tolist()
        labels = (
            cat.sql("SELECT label FROM images WHERE id IN (SELECT unnest(?))", [ids])
            .column("label")
            .to_pylist()
        )
    assert [r[0] for r in plain_duckdb(live_copy, "SELECT id FROM concept_boots")["rows"]] == ids
    assert labels.count("Ankle boot") > len(labels) / 2


def test_concept_commands_on_a_served_catalog_go_through_the_server(live_copy, serve, tmp_path):
    with engine.Catalog.open(live_copy, read_only=True) as cat:
        bags = (
            cat.sql("SELECT id FROM images WHERE label = 'Bag' ORDER BY id LIMIT 6").column("id").to_pylist()
        )
    with serve(live_copy) as (url, _):
        version = health(url)["version"]
        saved = cli("concept", "save", live_copy, "bags", "--positive", ",".join(map(str, bags)), "--json")
        assert saved.returncode == 0, saved.stderr
        out = json.loads(saved.stdout)
        assert out["view"] == "concept_bags" and out["results"] > 0
        assert health(url)["version"] > version
        view = [r[0] for r in plain_duckdb(live_copy, "SELECT id FROM concept_bags")["rows"]]
        assert len(view) == out["results"]
        assert cli("concept", "rename", live_copy, "bags", "handbags").returncode == 0
        shown = cli("concept", "show", live_copy, "handbags", "--new", "--seen", "--json")
        assert shown.returncode == 0, shown.stderr
        exported = tmp_path / "handbags.json"
        assert cli("concept", "export", live_copy, "handbags", exported).returncode == 0
        assert cli("concept", "import", live_copy, exported, "--name", "bags_again").returncode == 0
        bad = cli("concept", "rename", live_copy, "nope", "x")
        assert bad.returncode == 1 and "no concept named 'nope'" in bad.stderr
        assert cli("concept", "delete", live_copy, "handbags").returncode == 0
        names = [
            c["name"] for c in json.loads(cli("concept", "list", live_copy, "--json").stdout)["concepts"]
        ]
        assert names == ["bags_again"]
        assert health(url)["pending"] == 0
