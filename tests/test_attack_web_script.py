"""``scripts/attack_web.py`` end to end on the small demo catalog: three cheap attacks (cross-site
requests, console file and settings access, repeated column names) against a real server, run
as a user runs the script; the report must have its documented shape, every attack must hold and
the work folder must be gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("litestar")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "attack_web.py"
CHEAP = ("cross_site", "console_files", "repeated_columns")
RECORD_KEYS = {
    "group",
    "name",
    "held",
    "expect",
    "status",
    "wall_s",
    "response_bytes",
    "server_peak_rss_mb",
    "server_with_children_peak_rss_mb",
}
TARGET_KEYS = {
    "no_5xx",
    "server_peak_rss_mb",
    "console_queries_within_1_5x_limit",
    "console_worst_ratio",
    "health_and_search_under_1s_during_flood",
    "flood_max_latency_s",
    "nothing_foreign_served",
}


@pytest.fixture(scope="module")
def report(web_demo, tmp_path_factory):
    work = tmp_path_factory.mktemp("attack")
    out = work / "report.json"
    r = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--only",
            ",".join(CHEAP),
            "--demo",
            str(web_demo),
            "--work",
            str(work),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    printed = json.loads(r.stdout)
    assert json.loads(out.read_text()) == printed
    return printed, work


def test_the_report_has_its_shape(report):
    report, _ = report
    assert report["script"] == "attack_web" and report["quick"] is True
    assert sorted(report["groups"]) == sorted(CHEAP)
    assert report["rows"] > 0 and report["server"]["startup_s"] > 0
    assert report["settings"]["sql_time_limit_s"] > 0
    assert {r["group"] for r in report["attacks"]} == set(CHEAP)
    for record in report["attacks"]:
        assert set(record) >= RECORD_KEYS, record
        assert isinstance(record["status"], int) and record["wall_s"] >= 0 and record["response_bytes"] > 0
        assert 0 < record["server_peak_rss_mb"] <= record["server_with_children_peak_rss_mb"]
        assert record["expect"]
    assert set(report["targets"]) >= TARGET_KEYS


def test_every_attack_holds(report):
    report, _ = report
    assert report["not_held"] == [], [r for r in report["attacks"] if not r["held"]]
    names = {r["name"] for r in report["attacks"]}
    assert {
        "foreign_host",
        "cross_origin_refine",
        "json_as_text_plain",
        "security_headers",
        "read_blob_catalog",
        "read_csv_passwd",
        "duckdb_databases",
        "two_a",
        "self_join_ids",
    } <= names
    targets = report["targets"]
    assert targets["no_5xx"] is True and targets["nothing_foreign_served"] is True
    peaks = targets["server_peak_rss_mb"]
    assert peaks["server"] > 0 and peaks["server_under_limit"] is True
    assert targets["health_and_search_under_1s_during_flood"] is None  # no flood in these attacks


def test_the_work_folder_is_removed(report):
    report, work = report
    assert not Path(report["work"]).exists()
    assert [p.name for p in work.iterdir()] == ["report.json"]


def test_an_unknown_attack_is_a_usage_error(load_script, capsys):
    with pytest.raises(SystemExit) as e:
        load_script("attack_web").main(["--only", "cross_site,no_such_attack"])
    assert e.value.code == 2 and "no_such_attack" in capsys.readouterr().err
