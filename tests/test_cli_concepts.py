"""``clip-branches concept``: save, list, show, rename, export, import, retrain and delete a
concept through the real command line, and read its view with DuckDB alone."""

import json
import shutil

import numpy as np
import pytest
from test_cli import run
from test_concepts import plain_duckdb

import engine


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli-concepts") / "s.duckdb"
    run("synth", path, "--rows", 4000, "--seed", 5, "--block-size", 128)
    return path


@pytest.fixture
def synth(pristine, tmp_path):
    path = tmp_path / pristine.name
    shutil.copy(pristine, path)
    return path


def _positives(path):
    with engine.Catalog.open(path, read_only=True) as cat:
        return cat.search(id=0, k=8).ids.tolist()


def test_the_concept_workflow(synth, tmp_path):
    pos = ",".join(map(str, _positives(synth)))
    saved = json.loads(
        run("concept", "save", synth, "Shoes", "--positive", pos, "--seed", 2, "--json").stdout
    )
    assert saved["name"] == "shoes" and saved["view"] == "concept_shoes" and not saved["stale"]
    refined = json.loads(run("refine", synth, "--positive", pos, "--seed", 2, "--limit", 0, "--json").stdout)
    assert saved["results"] == refined["results"]

    listed = json.loads(run("concept", "list", synth, "--json").stdout)["concepts"]
    assert [(c["name"], c["results"], c["positives"]) for c in listed] == [("shoes", refined["results"], 8)]
    shown = json.loads(run("concept", "show", synth, "shoes", "--limit", 0, "--json").stdout)
    assert shown["ids"] == refined["ids"]
    assert [r[0] for r in plain_duckdb(synth, "SELECT id FROM concept_shoes")["rows"]] == refined["ids"]

    # Nothing is new right after saving; rows added later are, until the concept is opened.
    assert json.loads(run("concept", "show", synth, "shoes", "--new", "--json").stdout)["results"] == 0
    with engine.Catalog.open(synth) as cat:
        added = cat.add_codes(cat.codes(refined["ids"][:5])).tolist()
    new = json.loads(run("concept", "show", synth, "shoes", "--new", "--seen", "--limit", 0, "--json").stdout)
    assert set(added) <= set(new["ids"])
    assert json.loads(run("concept", "show", synth, "shoes", "--new", "--json").stdout)["results"] == 0

    exported = tmp_path / "shoes.json"
    run("concept", "export", synth, "shoes", exported)
    assert json.loads(exported.read_text())["format"] == "clip-branches-concept"
    out = run("concept", "import", synth, exported, "--name", "shoes_copy").stdout
    assert "ready" in out and "concept_shoes_copy" in out
    run("concept", "rename", synth, "shoes_copy", "boots")
    names = [c["name"] for c in json.loads(run("concept", "list", synth, "--json").stdout)["concepts"]]
    assert names == ["boots", "shoes"]
    run("concept", "delete", synth, "boots")
    assert plain_duckdb(synth, "SELECT * FROM concept_boots").get("error")

    retrained = json.loads(run("concept", "retrain", synth, "shoes", "--json").stdout)
    assert retrained["results"] >= saved["results"]  # the same labels, on rows that grew by 5 copies


@pytest.mark.parametrize(
    "args, message",
    [
        (("concept", "show", "{cat}", "nope"), "no concept named 'nope'"),
        (("concept", "delete", "{cat}", "nope"), "no concept named 'nope'"),
        (("concept", "save", "{cat}", "bad name", "--positive", "1"), "not a usable concept name"),
        (("concept", "save", "{cat}", "x", "--positive", "99999999"), "99999999"),
        (("concept", "import", "{cat}", "{cat}"), "not valid JSON"),
        (("concept", "show", "{missing}", "x"), "no catalog at"),
    ],
)
def test_bad_concept_commands_say_what_is_wrong(pristine, tmp_path, args, message):
    synth = pristine
    args = [a.format(cat=synth, missing=tmp_path / "missing.duckdb") for a in args]
    proc = run(*args, check=False)
    assert proc.returncode == 1
    assert message in proc.stderr
    with engine.Catalog.open(synth, read_only=True) as cat:
        assert cat.concepts.list() == []
        assert len(cat) == 4000


def test_a_stale_concept_is_listed_as_stale(synth):
    pos = ",".join(map(str, _positives(synth)))
    run("concept", "save", synth, "a", "--positive", pos)
    with engine.Catalog.open(synth) as cat:
        ids = cat.sql("SELECT id FROM codes").column("id").to_numpy()
        cat.build_index(codes=np.ascontiguousarray(cat.codes(ids)[:, ::-1]), ids=ids)
    listed = json.loads(run("concept", "list", synth, "--json").stdout)["concepts"]
    assert listed[0]["stale"] and listed[0]["results"] is None
    proc = run("concept", "show", synth, "a", check=False)
    assert proc.returncode == 1 and "concept retrain" in proc.stderr
