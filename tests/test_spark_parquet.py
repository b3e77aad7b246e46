"""Beyond one machine: the compiled SQL of a refine, unchanged, on the Parquet export, run by
Spark SQL (local mode, the machine's Java) and by DuckDB reading the files: both return the
engine's ids in the engine's order."""

from __future__ import annotations

import shutil

import duckdb
import numpy as np
import pytest

import engine

pyspark = pytest.importorskip("pyspark")
pytestmark = [
    pytest.mark.spark,
    pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs a Java runtime"),
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("spark")
    rng = np.random.default_rng(3)
    centres = rng.integers(30, 226, (8, 32))
    labels = rng.integers(0, 8, 6000)
    codes = np.clip(centres[labels] + rng.normal(0, 12, (6000, 32)), 0, 255).astype(np.uint8)
    path = root / "c.duckdb"
    with engine.Catalog.create(path) as cat:
        cat.add_codes(codes, ids=np.arange(10_000, 16_000))
        cat.build_index(block_size=128)
        cat.export_parquet(root / "export")
    results = {}
    with engine.Catalog.open(path, read_only=True) as cat:
        positives = np.arange(10_000, 16_000)[labels == 3][:10]
        negatives = np.arange(10_000, 16_000)[labels == 5][:3]
        for model in ("ensemble", "branch", "tree", "forest"):
            results[model] = cat.refine(positives, negatives, model=model, random_state=0)
        results["search"] = cat.search(id=int(positives[0]), k=50)
    return root / "export", results


@pytest.mark.parametrize("name", ["ensemble", "branch", "tree", "forest", "search"])
def test_spark_sql_returns_the_engines_ids_in_order(exported, spark, name):
    directory, results = exported
    result = results[name]
    assert len(result.ids) > 0
    spark.read.parquet(str(directory / "codes.parquet")).createOrReplaceTempView("codes")
    rows = spark.sql(result.sql).collect()
    assert [int(r["id"]) for r in rows] == result.ids.tolist()


@pytest.mark.parametrize("name", ["ensemble", "branch", "tree", "forest", "search"])
def test_duckdb_on_the_parquet_files_returns_the_same(exported, name):
    directory, results = exported
    result = results[name]
    con = duckdb.connect()
    try:
        con.execute(f"CREATE VIEW codes AS SELECT * FROM read_parquet('{directory / 'codes.parquet'}')")
        assert [r[0] for r in con.execute(result.sql).fetchall()] == result.ids.tolist()
    finally:
        con.close()
