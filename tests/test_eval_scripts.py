"""The quality benchmarks' quick modes: the simulated labelling session, the paired comparison
and the Figure 3 protocol run end to end on a small demo catalog and print sound JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _run(load_script, name: str, argv: list[str], capsys) -> dict:
    assert load_script(name).main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_session_benchmark_quick(load_script, web_demo_copy, capsys):
    path = str(web_demo_copy())
    report = _run(
        load_script,
        "eval_session",
        [
            "--quick",
            "--catalog",
            path,
            "--synthetic-rows",
            "5000",
            "--clusters-rows",
            "6000",
            "--models",
            "ensemble",
            "tree",
            "ensemble-original",
            "ensemble[guide=False,growth=top-down]",
        ],
        capsys,
    )
    demo, synthetic, clusters = (report["catalogs"][k] for k in ("demo", "synthetic", "clusters"))
    assert demo["sessions"] == 3 and synthetic["sessions"] == 3 and clusters["sessions"] == 3
    assert clusters["classes"] == 50 and clusters["rows"] == 6000
    assert 0 < demo["ceiling"]["mean_f1"] <= 1 and len(demo["ceiling"]["per_class_f1"]) == 10
    for cat in (demo, synthetic, clusters):
        assert set(cat["models"]) == {
            "ensemble",
            "tree",
            "ensemble-original",
            "ensemble[guide=False,growth=top-down]",
        }
        for m in cat["models"].values():
            rounds = m["rounds"]
            assert [r["round"] for r in rounds] == [1, 2]
            assert rounds[0]["labels_mean"] == 30 and rounds[1]["labels_mean"] == 60  # a grid of 30 per round
            for r in rounds:
                for key in ("mean_p", "mean_r", "mean_f1", "min_class_f1"):
                    assert 0 <= r[key] <= 1
                assert r["min_class_f1"] <= r["mean_f1"] + 1e-9
                assert set(r["baselines"]) == {"knn_oracle", "knn_radius", "linear"}
                assert all(0 <= b["mean_f1"] <= 1 for b in r["baselines"].values())
                for p, rec, f1 in r["per_class_p_r_f1"].values():
                    assert f1 <= max(p, rec) + 1e-9 and (
                        f1 == 0 or 2 * p * rec / (p + rec) == pytest.approx(f1, abs=0.02)
                    )
            assert rounds[0]["next_grid_from"] == ["suggestions"]  # every round offers suggestions
    t = report["targets"]
    assert (
        t["model"] == "ensemble" and t["round1_mean_f1"] == demo["models"]["ensemble"]["rounds"][0]["mean_f1"]
    )


def test_session_model_specs(load_script):
    es = load_script("eval_session")
    model, options = es.model_spec("ensemble[growth=top-down,guide=False,n_estimators=5]")
    assert options == {"guide": False} and model.growth == "top-down" and model.n_estimators == 5
    model, options = es.model_spec("branch-original")
    assert options == {"guide": False} and model.growth == "bottom-up" and model.min_pts == "auto"
    assert es.model_spec("forest") == ("forest", {})
    with pytest.raises(ValueError, match="unknown model"):
        es.model_spec("svm")


@pytest.mark.parametrize("guided", [False, True])
def test_paired_comparison_quick_without_the_original(load_script, capsys, guided):
    report = _run(
        load_script,
        "compare_original",
        [
            "--quick",
            "--catalogs",
            "synthetic",
            "clusters",
            "--synthetic-rows",
            "8000",
            "--clusters-rows",
            "8000",
        ]
        + ["--guided"] * guided,
        capsys,
    )
    assert ("guided" in report["protocol"]["training"]) is guided
    for cat in report["catalogs"].values():
        assert cat["runs"] == 4 and not report["protocol"]["original"]
        assert set(cat["models"]) == {
            f"{k}/ours-{g}" for k in ("ensemble", "branch") for g in ("bottom-up", "top-down", "product")
        }
        for pair in cat["pairs"].values():
            assert pair["higher"] + pair["lower"] + pair["equal"] == 4 and 0 <= pair["sign_test_p"] <= 1


def test_sign_test(load_script):
    co = load_script("compare_original")
    assert co.sign_test(0, 0) == 1.0 and co.sign_test(5, 5) == 1.0
    assert co.sign_test(10, 0) == pytest.approx(2 / 1024)
    assert co.sign_test(0, 10) == co.sign_test(10, 0)


def test_figure3_quick(load_script, web_demo_copy, capsys):
    path = str(web_demo_copy())
    report = _run(
        load_script,
        "eval_feedback",
        ["--quick", "--catalog", path, "--synthetic-rows", "5000", "--models", "ensemble", "forest"],
        capsys,
    )
    for cat in report["catalogs"].values():
        assert cat["select_vs_predict_mismatches"] == []  # the index answers what predict says
        assert set(cat["knn_paper"]["mean_f1"]) == {"1", "4", "16"}
        for m in cat["models"].values():
            assert all(0 <= v <= 1 for v in m["mean_f1"].values())
            assert all(0 <= v <= 3 for v in m["classes_above_knn_paper"].values())
    # with one positive the paper's united k-NN is the centroid k-NN
    for cat in report["catalogs"].values():
        assert cat["knn"]["mean_f1"]["1"] == pytest.approx(cat["knn_paper"]["mean_f1"]["1"])
    assert np.isfinite(report["wall_s"])


def test_constants_are_set_for_a_run_and_bad_ones_refused(load_script, monkeypatch):
    from engine.learn import guide
    from engine.learn import refine as rf

    es = load_script("eval_session")
    monkeypatch.setattr(rf, "HULL_DIMS", rf.HULL_DIMS)  # restored after the test
    monkeypatch.setattr(guide, "GUIDE_C", guide.GUIDE_C)
    assert es.set_constants(["HULL_DIMS=0", "GUIDE_C=2.5"]) == {
        "engine.learn.refine.HULL_DIMS": 0,
        "engine.learn.guide.GUIDE_C": 2.5,
    }
    assert rf.HULL_DIMS == 0 and guide.GUIDE_C == 2.5
    for bad, message in (
        ("NOPE=1", "NAME=VALUE"),
        ("HULL_DIMS", "NAME=VALUE"),
        ("HULL_DIMS=1.5", "not a int"),
        ("MODELS=1", "only numeric"),
        ("POOL_SEED=x", "not a int"),
    ):
        with pytest.raises(ValueError, match=message):
            es.set_constants([bad])


def test_scale_benchmark_small(load_script, tmp_path, capsys):
    argv = ["--rows", "30000", "--repeats", "1", "--dir", str(tmp_path)]
    report = _run(load_script, "bench_scale", argv, capsys)
    assert report["rows"] == 30000 and report["build"]["cached"] is False
    assert report["build"]["peak_rss_bytes"] > 0 and report["file_bytes"] > 30000 * 32
    rounds = report["rounds"]
    assert set(rounds) == {"ensemble_tight", "branch_tight", "ensemble_loose", "branch_loose"}
    assert all(0 < r["share_touched"] <= 1 and r["time_total_ms"] > 0 for r in rounds.values())
    assert rounds["ensemble_tight"]["results"] > 0
    cold, without = report["cold_start"], report["cold_start_without_copy"]
    assert cold["index_from"] == "mapped copy" and without["index_from"] == "catalog"
    for c in (cold, without):
        assert 0 < c["open_and_load_s"] <= c["first_refine_s"] and c["rss_after_load_bytes"] > 0
    assert report["mapped_copy_bytes"] > 30000 * 40 and (tmp_path / "scale-30000-0.duckdb.kd").exists()
    assert report["knn_top60_ms"] > 0
    targets = report["targets_at_100m"]
    names = set(load_script("bench_scale").TARGETS)
    assert set(targets) == names | {"cold_start_s_without_copy", "rss_after_load_gb_without_copy"}
    assert all(isinstance(t["met"], bool) for t in targets.values())
    assert _run(load_script, "bench_scale", argv, capsys)["build"]["cached"] is True
