"""A refine round over a Parquet export on Spark (local mode, the machine's Java): trained from
the export's files, run by Spark SQL over one export or its shards, it returns and writes the
ranking ``Catalog.refine`` gives on the catalog, as the API and as ``refine --spark``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import engine
from engine.cli import main
from engine.spark_refine import SQL_CONF, refine_on_spark

pyspark = pytest.importorskip("pyspark")
pytestmark = [
    pytest.mark.spark,
    pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs a Java runtime"),
]

N_ROWS, TAIL = 4000, 120


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A catalog of 8 clusters (block_size 128, 32 blocks, and rows added after the build),
    exported whole and in 2 and 4 shards; labels of one cluster against another."""
    root = tmp_path_factory.mktemp("spark-refine")
    rng = np.random.default_rng(5)
    centres = rng.integers(30, 226, (8, 32))
    labels = rng.integers(0, 8, N_ROWS + TAIL)
    codes = np.clip(centres[labels] + rng.normal(0, 12, (len(labels), 32)), 0, 255).astype(np.uint8)
    ids = np.arange(50_000, 50_000 + len(labels))
    path = root / "c.duckdb"
    with engine.Catalog.create(path) as cat:
        cat.add_codes(codes[:N_ROWS], ids=ids[:N_ROWS])
        cat.build_index(block_size=128)
        cat.add_codes(codes[N_ROWS:], ids=ids[N_ROWS:])
        cat.export_parquet(root / "whole")
        for n in (2, 4):
            cat.export_parquet(root / f"s{n}", shards=n)
    positives = np.append(ids[:N_ROWS][labels[:N_ROWS] == 3][:8], ids[N_ROWS:][labels[N_ROWS:] == 3][:1])
    negatives = ids[labels == 5][:3]
    return root, path, positives, negatives


def _expected(exported, **options):
    _, path, positives, negatives = exported
    with engine.Catalog.open(path, read_only=True) as cat:
        return cat.refine(positives, negatives, random_state=0, **options)


def _ranking(out):
    table = pq.read_table(out).sort_by("rank")
    assert table.column("rank").to_pylist() == list(range(1, table.num_rows + 1))
    return table.column("id").to_numpy(), table.column("votes").to_numpy()


@pytest.mark.parametrize("directory", ["whole", "s2", "s4"])
@pytest.mark.parametrize("model", ["ensemble", "branch"])
def test_refine_on_spark_is_catalog_refine(exported, spark, tmp_path, directory, model):
    root, _, positives, negatives = exported
    expected = _expected(exported, model=model)
    assert len(expected.ids) > 0
    got = refine_on_spark(
        root / directory, positives, negatives, model=model, random_state=0, out=tmp_path / "r", spark=spark
    )
    assert got.sql == expected.sql and got.count == len(expected.ids)
    assert (
        got.ids.tolist() == expected.ids[:60].tolist()
        and got.scores.tolist() == expected.scores[:60].tolist()
    )
    ids, votes = _ranking(tmp_path / "r")
    assert np.array_equal(ids, expected.ids) and np.array_equal(votes, expected.scores)
    assert got.stats["results"] == got.count and got.stats["rows"] == N_ROWS + TAIL
    assert got.stats["shards"] == (None if directory == "whole" else int(directory[1]))


def test_unguided_rounds_and_uris_and_the_whole_ranking_without_output(exported, spark):
    root, _, positives, negatives = exported
    expected = _expected(exported, guide=False)
    got = refine_on_spark(
        (root / "s4").as_uri(), positives, negatives, guide=False, random_state=0, top=None, spark=spark
    )
    assert got.out is None and got.sql == expected.sql and got.stats["guided"] is False
    assert np.array_equal(got.ids, expected.ids) and np.array_equal(got.scores, expected.scores)


def test_the_sessions_settings_are_restored(exported, spark):
    root, _, positives, _ = exported
    key = "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning"
    spark.conf.set(key, "false")
    refine_on_spark(root / "whole", positives, model="branch", random_state=0, top=3, spark=spark)
    assert spark.conf.get(key) == "false" and key in SQL_CONF


def test_unknown_ids_and_an_existing_output_are_refused(exported, spark, tmp_path):
    root, _, positives, _ = exported
    with pytest.raises(engine.UnknownIds, match="unknown image id.*7"):
        refine_on_spark(root / "s2", [int(positives[0]), 7], spark=spark)
    with pytest.raises(engine.UnknownIds, match="99999999"):
        refine_on_spark(root / "whole", positives, [99_999_999], spark=spark)
    (tmp_path / "r").mkdir()
    with pytest.raises(engine.CatalogError, match="already exists"):
        refine_on_spark(root / "whole", positives, out=tmp_path / "r", spark=spark)


def test_what_is_not_an_export_is_named(exported, spark, tmp_path):
    root, _, positives, _ = exported
    cases = [
        (tmp_path / "nowhere", "no export at"),
        (tmp_path, "not a clip-branches export: it has no catalog.json"),
        (root / "s4" / "shard-001", "shard 1 of the 4 shards of a sharded export; give the directory above"),
        (root / "c.duckdb", "is not a directory"),
    ]
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "catalog.json").write_text(json.dumps({"format": "something-else"}))
    cases.append((tmp_path / "foreign", "not a clip-branches export"))
    for directory, message in cases:
        with pytest.raises(engine.CatalogError, match=message):
            refine_on_spark(directory, positives, spark=spark)


def test_refine_spark_on_the_command_line(exported, spark, tmp_path, capsys):
    # the CLI runs in this process, so it takes the test's Spark session as the active one
    root, _, positives, negatives = exported
    expected = _expected(exported)
    args = ["refine", "--spark", "local[2]", str(root / "s4"), "--positive", ",".join(map(str, positives))]
    args += ["--negative", ",".join(map(str, negatives)), "--out", str(tmp_path / "r"), "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ids"] == expected.ids.tolist()[:1000] and out["results"] == len(expected.ids)
    assert out["sql"] == expected.sql and out["suggestions"] == [] and out["ids_capped"] is False
    assert np.array_equal(_ranking(tmp_path / "r")[0], expected.ids)
    assert main([*args[:-1], "--limit", "5"]) == 1  # the output folder exists now
    assert "already exists" in capsys.readouterr().err
    assert main([*args[:-1], "--limit", "5", "--overwrite"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        f"{i}\t{v}" for i, v in zip(expected.ids[:5].tolist(), expected.scores[:5].tolist(), strict=True)
    ]


def test_the_benchmark_compares_spark_with_the_engine(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_spark_refine.py"
    argv = ["--rows", "20000", "--repeats", "1", "--dir", str(tmp_path)]
    proc = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["rows"] == 20000 and report["master"] == "local[2]"
    assert set(report["rounds"]) == {"ensemble_tight", "branch_tight", "ensemble_loose", "branch_loose"}
    assert report["all_same_ids"] is True
    for r in report["rounds"].values():
        assert r["spark_same_sql"] and r["spark"]["count"] == r["results"] > 0
        assert r["engine_ms"] > 0 and r["spark"]["time_total_ms"] > 0
