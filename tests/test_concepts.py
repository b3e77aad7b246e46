"""Saved concepts: the engine's answer, the view in the file and a plain DuckDB process agree,
before and after new images arrive; a change of codes makes a concept stale, never wrong."""

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
from engine.boxes import BoxSet
from engine.concepts import VIEW_PREFIX, Concept
from engine.concepts import save as save_concept
from engine.errors import InvalidArgument, ReadOnlyError, StaleConcept

N = 3000
BLOCK = 64


@pytest.fixture
def cat(make_catalog, codegen):
    rng = np.random.default_rng(7)
    codes = codegen.clustered(rng, N, n_clusters=6, spread=5)
    labels = [f"c{i % 3}" for i in range(N)]
    return make_catalog(codes, metadata={"label": labels}, block_size=BLOCK)


def _positives(cat, n=6):
    """Ids of rows around one cluster: the nearest neighbours of image 0."""
    return cat.search(id=0, k=n).ids.tolist()


def _fine_tune(cat, model="ensemble"):
    pos = _positives(cat)
    far = cat.search(id=int(pos[0]), k=N).ids[-4:].tolist()
    return cat.refine(pos, far, model=model, sampled_negatives=300, random_state=3)


def plain_duckdb(path, sql):
    """Rows of ``sql`` from a separate process that knows nothing of clip-branches: DuckDB
    alone, the file opened read-only."""
    code = (
        "import duckdb, json, sys\n"
        "con = duckdb.connect(sys.argv[1], read_only=True)\n"
        "try:\n"
        "    print(json.dumps({'rows': con.execute(sys.argv[2]).fetchall()}))\n"
        "except duckdb.Error as e:\n"
        "    print(json.dumps({'error': str(e)}))\n"
    )
    r = subprocess.run(
        [sys.executable, "-I", "-c", code, str(path), sql], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_saved_concept_returns_the_refine_result(cat):
    result = _fine_tune(cat)
    saved = cat.save_concept("cluster_a", result, note="the first cluster")
    assert saved.name == "cluster_a" and saved.view == "concept_cluster_a"
    assert not saved.stale
    assert saved.request["positives"] == sorted(_positives(cat))
    assert saved.boxes == result.model.boxes_
    applied = cat.concepts.result("cluster_a")
    assert np.array_equal(applied.ids, result.ids)
    assert np.array_equal(applied.scores, result.scores)
    rows = cat.sql("SELECT id, votes, rank FROM concept_cluster_a").to_pylist()
    assert [r["id"] for r in rows] == result.ids.tolist()
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert cat.concept("cluster_a").note == "the first cluster"
    assert [c.name for c in cat.concepts.list()] == ["cluster_a"]


def test_a_plain_duckdb_process_reads_the_view_before_and_after_new_images(cat, codegen):
    result = _fine_tune(cat)
    cat.save_concept("cluster_a", result)
    path = cat.path
    cat.close()
    before = plain_duckdb(path, "SELECT id FROM concept_cluster_a")
    assert [r[0] for r in before["rows"]] == result.ids.tolist()
    by_macro = plain_duckdb(path, "SELECT id FROM concept('cluster_a')")
    assert [r[0] for r in by_macro["rows"]] == result.ids.tolist()

    # New images arrive after the save: copies of concept members and unrelated codes.
    cat = engine.Catalog.open(path)
    members = cat.codes(result.ids[:20])
    others = codegen.uniform(np.random.default_rng(1), 50)
    new_ids = cat.add_codes(np.concatenate([members, others]))
    engine_ids = cat.concepts.result("cluster_a").ids
    assert set(new_ids[:20].tolist()) <= set(engine_ids.tolist())
    assert len(engine_ids) > len(result.ids)
    new_by_engine = cat.concepts.new_ids("cluster_a")
    assert set(new_by_engine.tolist()) >= set(new_ids[:20].tolist())
    assert set(new_by_engine.tolist()) <= set(new_ids.tolist())
    cat.close()
    after = plain_duckdb(path, "SELECT id FROM concept_cluster_a")
    assert [r[0] for r in after["rows"]] == engine_ids.tolist()
    new = plain_duckdb(path, "SELECT id FROM concept_new('cluster_a')")
    assert [r[0] for r in new["rows"]] == new_by_engine.tolist()

    cat = engine.Catalog.open(path)
    cat.concepts.mark_seen("cluster_a")
    assert len(cat.concepts.new_ids("cluster_a")) == 0
    cat.close()


def test_concepts_combine_in_sql(cat):
    a = _fine_tune(cat)
    cat.save_concept("a", a)
    b_pos = cat.search(id=int(a.ids[-1]), k=5).ids.tolist()
    b = cat.refine(b_pos, model="branch", sampled_negatives=300, random_state=1)
    cat.save_concept("b", b)
    both = cat.sql("SELECT id FROM concept_a INTERSECT SELECT id FROM concept_b ORDER BY id")
    expected = sorted(set(a.ids.tolist()) & set(b.ids.tolist()))
    assert both.column("id").to_pylist() == expected
    only_a = cat.sql("SELECT id FROM concept_a EXCEPT SELECT id FROM concept_b ORDER BY id")
    assert only_a.column("id").to_pylist() == sorted(set(a.ids.tolist()) - set(b.ids.tolist()))
    labelled = cat.sql(
        "SELECT i.label, count(*) AS n FROM concept_a c JOIN images i USING (id) GROUP BY ALL ORDER BY label"
    ).to_pylist()
    assert sum(r["n"] for r in labelled) == len(a.ids)
    # The console runs the same views and macros in its sandbox.
    q = cat.query("SELECT count(*) AS n FROM concept('b')")
    assert q.table.column("n").to_pylist() == [len(b.ids)]


def test_changed_codes_make_a_concept_stale_and_retrain_fixes_it(cat):
    result = _fine_tune(cat)
    cat.save_concept("cluster_a", result)
    cat.build_index(block_size=BLOCK)  # sorting the same codes again keeps it fresh
    assert not cat.concept("cluster_a").stale
    assert np.array_equal(cat.concepts.result("cluster_a").ids, result.ids)

    ids = cat.sql("SELECT id FROM codes ORDER BY id").column("id").to_numpy()
    codes = cat.codes(ids)
    shifted = np.clip(codes.astype(np.int16)[:, ::-1] + 3, 0, 255).astype(np.uint8)  # other codes
    cat.build_index(block_size=BLOCK, codes=shifted, ids=ids)
    concept = cat.concept("cluster_a")
    assert concept.stale
    with pytest.raises(StaleConcept, match="retrain"):
        cat.concepts.result("cluster_a")
    with pytest.raises(engine.errors.InvalidSql, match="stale"):
        cat.sql("SELECT * FROM concept_cluster_a")
    path = cat.path
    cat.close()
    out = plain_duckdb(path, "SELECT * FROM concept_cluster_a")
    assert "stale" in out["error"] and "concept retrain" in out["error"]

    cat = engine.Catalog.open(path)
    fresh = cat.concepts.retrain("cluster_a")
    assert not fresh.stale and fresh.request["positives"] == concept.request["positives"]
    again = cat.refine(**_request_args(fresh.request))
    assert np.array_equal(cat.concepts.result("cluster_a").ids, again.ids)
    view = cat.sql("SELECT id FROM concept_cluster_a").column("id").to_pylist()
    assert view == again.ids.tolist()
    cat.close()


def _request_args(request):
    return {
        "positives": request["positives"],
        "negatives": request["negatives"],
        **{k: v for k, v in request.items() if k not in ("positives", "negatives") and v is not None},
    }


def test_replacing_codes_makes_concepts_stale(cat):
    cat.save_concept("a", _fine_tune(cat))
    ids = cat.sql("SELECT id FROM codes").column("id").to_numpy()
    cat.replace_codes(cat.codes(ids), ids)  # the same bytes, but nothing vouches for them
    assert cat.concept("a").stale


def test_rename_delete_and_the_macro(cat):
    result = _fine_tune(cat)
    cat.save_concept("a", result)
    with pytest.raises(InvalidArgument, match="exists"):
        cat.save_concept("a", result)
    cat.save_concept("a", result, replace=True)
    cat.concepts.rename("a", "renamed")
    assert [c.name for c in cat.concepts.list()] == ["renamed"]
    assert cat.sql("SELECT count(*) AS n FROM concept('renamed')").column("n").to_pylist() == [
        len(result.ids)
    ]
    with pytest.raises(engine.errors.InvalidSql, match="no saved concept named a"):
        cat.sql("SELECT * FROM concept('a')")
    with pytest.raises(engine.errors.InvalidSql):
        cat.sql("SELECT * FROM concept_a")
    cat.concepts.delete("renamed")
    assert cat.concepts.list() == []
    with pytest.raises(InvalidArgument, match="no concept named 'renamed'"):
        cat.concept("renamed")
    with pytest.raises(engine.errors.InvalidSql, match="saved: none"):
        cat.sql("SELECT * FROM concept('renamed')")


@pytest.mark.parametrize(
    "name", ["", "1abc", "a b", "a-b", "x" * 49, "concept'; DROP TABLE codes; --", "é", None, 3]
)
def test_bad_names_are_refused(cat, name):
    result = _fine_tune(cat, model="branch")
    with pytest.raises(InvalidArgument, match="concept name"):
        cat.save_concept(name, result)
    assert cat.concepts.list() == []


def test_names_are_case_insensitive_like_sql(cat):
    cat.save_concept("  Red_Sneakers ", _fine_tune(cat, model="branch"))
    assert cat.concept("RED_SNEAKERS").name == "red_sneakers"


def test_only_a_refine_result_can_be_saved(cat):
    with pytest.raises(InvalidArgument, match="only a fine-tune"):
        cat.save_concept("a", cat.search(id=0, k=5))


def test_read_only_catalogs_read_concepts_but_do_not_change_them(cat):
    result = _fine_tune(cat)
    cat.save_concept("a", result)
    path = cat.path
    cat.close()
    with engine.Catalog.open(path, read_only=True) as ro:
        assert np.array_equal(ro.concepts.result("a").ids, result.ids)
        with pytest.raises(ReadOnlyError):
            ro.concepts.delete("a")
        with pytest.raises(ReadOnlyError):
            ro.save_concept("b", result)


def test_export_and_import(cat, tmp_path, make_catalog):
    result = _fine_tune(cat)
    cat.save_concept("a", result)
    path = tmp_path / "a.json"
    doc = cat.concepts.export("a", path)
    assert doc["format"] == "clip-branches-concept" and json.loads(path.read_text())["name"] == "a"
    imported = cat.concepts.import_file(path, name="a_again")
    assert not imported.stale
    assert np.array_equal(cat.concepts.result("a_again").ids, result.ids)
    with pytest.raises(InvalidArgument, match="exists"):
        cat.concepts.import_file(path)

    # Another catalog's codes are another space: the concept arrives stale, never wrong.
    other = make_catalog(cat.codes(cat.sql("SELECT id FROM codes").column("id").to_numpy()), block_size=BLOCK)
    assert other.concepts.import_file(path).stale


@pytest.mark.parametrize(
    "text, match",
    [
        ("not json", "not valid JSON"),
        ("[]", "not a concept file"),
        ('{"format": "clip-branches-concept", "version": 9}', "version"),
        ('{"format": "clip-branches-concept", "version": 1, "name": "a"}', "incomplete"),
    ],
)
def test_malformed_concept_files_are_refused(cat, tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InvalidArgument, match=match):
        cat.concepts.import_file(path)
    with pytest.raises(InvalidArgument, match="no concept file"):
        cat.concepts.import_file(tmp_path / "missing.json")
    assert cat.concepts.list() == []


def test_compaction_keeps_the_views(cat):
    result = _fine_tune(cat)
    cat.save_concept("a", result)
    cat.compact()
    assert cat.sql("SELECT id FROM concept_a").column("id").to_pylist() == result.ids.tolist()
    assert cat.sql("SELECT count(*) AS n FROM concept('a')").column("n").to_pylist() == [len(result.ids)]


# -- the view against a brute-force oracle ---------------------------------------------------
def _oracle(codes, pos, ids, concept):
    """ids of rows with at least min_votes member votes, by votes desc, distance, position."""
    boxes = concept.boxes
    inside = np.all((codes[:, None, :] >= boxes.lo[None]) & (codes[:, None, :] <= boxes.hi[None]), axis=2)
    members = np.unique(boxes.members)
    votes = np.stack([inside[:, boxes.members == m].any(axis=1) for m in members], axis=1).sum(axis=1)
    dist = ((codes.astype(np.int64) - np.asarray(concept.center)) ** 2).sum(axis=1)
    keep = votes >= max(1, concept.min_votes)
    order = np.lexsort((pos[keep], dist[keep], -votes[keep]))
    return ids[keep][order].tolist()


box_strategy = st.lists(
    st.dictionaries(
        st.integers(0, 31),
        st.tuples(st.integers(0, 255), st.integers(0, 255)).map(sorted),
        min_size=1,
        max_size=3,
    ),
    min_size=1,
    max_size=6,
)


@pytest.fixture(scope="module")
def oracle_catalog(tmp_path_factory):
    rng = np.random.default_rng(11)
    path = tmp_path_factory.mktemp("concept-oracle") / "c.duckdb"
    cat = engine.Catalog.create(path)
    cat.add_codes(rng.integers(0, 256, (800, 32), dtype=np.uint8))
    cat.build_index(block_size=32)
    cat.add_codes(rng.integers(0, 256, (50, 32), dtype=np.uint8))  # rows outside the k-d order
    yield cat
    cat.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    boxes=box_strategy,
    member_of=st.lists(st.integers(0, 2), min_size=6, max_size=6),
    min_votes=st.integers(1, 3),
    center=st.lists(st.integers(0, 255), min_size=32, max_size=32),
)
def test_view_and_engine_match_a_brute_force_oracle(oracle_catalog, boxes, member_of, min_votes, center):
    cat = oracle_catalog
    boxset = BoxSet.from_json(
        {
            "boxes": [{str(d): list(b) for d, b in box.items()} for box in boxes],
            "members": member_of[: len(boxes)],
        }
    )
    concept = Concept("oracle", boxset, min_votes, center, {"positives": []}, "")
    save_concept(cat.store, concept, replace=True)
    table = cat.sql(
        "SELECT pos, id, " + ", ".join(f"f{d:02d}" for d in range(32)) + " FROM codes ORDER BY pos"
    )
    codes = np.stack([table.column(f"f{d:02d}").to_numpy() for d in range(32)], axis=1)
    expected = _oracle(codes, table.column("pos").to_numpy(), table.column("id").to_numpy(), concept)
    assert cat.sql(f"SELECT id FROM {VIEW_PREFIX}oracle").column("id").to_pylist() == expected
    assert cat.concepts.result("oracle").ids.tolist() == expected
