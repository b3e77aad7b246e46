"""SIGKILL fault injection, short version: two kills per operation with ``scripts/chaos_kill.py``.

The script kills ingest, train-head, index and export at random points, and ingest into a served
catalog (the ingest command, then the server), checks DuckDB-level and
engine invariants after each kill, runs the command again and compares the result with an
unkilled run (see its docstring). Here every kill must have landed while the command was running
and been survived: the re-run completed, and nothing was lost, duplicated or left running.
"""

from pathlib import Path

import pytest

pytest.importorskip("torch")
FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FASHION.exists(), reason="needs the Debian package dataset-fashion-mnist"),
]


def test_kills_at_random_points_lose_nothing(tmp_path, load_script):
    chaos = load_script("chaos_kill")
    report = chaos.run_chaos(
        tmp_path,
        kills=2 * len(chaos.OPERATIONS),
        seed=0,
        operations=list(chaos.OPERATIONS),
        images=200,
        head_method="pca",
        references=1,
    )
    assert list(report["operations"]) == list(chaos.OPERATIONS)
    for name, op in report["operations"].items():
        assert op["failures"] == [], name
        assert op["kills"] == 2, f"{name}: {op['missed']} kills missed, {op['kills']} landed"
        assert op["survived"] == op["reruns_completed"] == 2, name
        assert op["losses"] == op["duplicates"] == op["orphans"] == op["invariant_failures"] == 0, name
        assert sum(op["outcomes"].values()) == 2 and "unexpected" not in op["outcomes"], name
